/*
 * timed.c - mq_timedsend and mq_timedreceive: absolute CLOCK_REALTIME
 * deadlines, ETIMEDOUT only when the call would block, no early timeout,
 * EINVAL for a bad tv_nsec when the call would block, huge deadlines,
 * O_NONBLOCK taking precedence, and a timed wait ended by another thread.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <pthread.h>

/* A timed-out call may not return before its deadline; allow this much
 * for clock granularity. */
#define EARLY_SLACK_MS 10

static struct timespec ts_of(time_t sec, long nsec)
{
    struct timespec ts;
    ts.tv_sec = sec;
    ts.tv_nsec = nsec;
    return ts;
}

static void fill(mqd_t q, int n)
{
    for (int i = 0; i < n; i++)
        CHECK_OK(mq_send(q, "f", 1, 0));
}

/* A deadline in the past times out at once, but only if the call would
 * block: with a message available (or room to send) it succeeds. */
static void test_past_deadline(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec epoch = ts_of(0, 0), past = mqt_deadline_ms(-1000);
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "past", O_RDWR, 2, 64);

    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &past), ETIMEDOUT);
    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &epoch), ETIMEDOUT);

    CHECK_OK(mq_timedsend(q, "a", 1, 4, &past));
    CHECK_OK(mq_timedsend(q, "b", 1, 5, &epoch));
    CHECK_EQ(mqt_curmsgs(q), 2);
    CHECK_ERR(mq_timedsend(q, "c", 1, 6, &past), ETIMEDOUT);
    CHECK_ERR(mq_timedsend(q, "c", 1, 6, &epoch), ETIMEDOUT);
    CHECK_EQ(mqt_curmsgs(q), 2);

    CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &past), 1);
    CHECK_EQ(prio, 5);
    CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &epoch), 1);
    CHECK_EQ(prio, 4);
    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, &prio, &epoch), ETIMEDOUT);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A blocked call with a near deadline times out, not before it. */
static void test_future_deadline_times_out(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec deadline, after, start;
    mqd_t q = mqt_create(name, "future", O_RDWR, 1, 64);

    start = mqt_now(CLOCK_MONOTONIC);
    deadline = mqt_deadline_ms(200);
    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &deadline), ETIMEDOUT);
    after = mqt_now(CLOCK_REALTIME);
    CHECK(mqt_ts_diff_ms(after, deadline) >= -EARLY_SLACK_MS);
    CHECK(mqt_ts_diff_ms(mqt_now(CLOCK_MONOTONIC), start) >=
          200 - EARLY_SLACK_MS);

    fill(q, 1);
    start = mqt_now(CLOCK_MONOTONIC);
    deadline = mqt_deadline_ms(150);
    CHECK_ERR(mq_timedsend(q, "x", 1, 0, &deadline), ETIMEDOUT);
    after = mqt_now(CLOCK_REALTIME);
    CHECK(mqt_ts_diff_ms(after, deadline) >= -EARLY_SLACK_MS);
    CHECK(mqt_ts_diff_ms(mqt_now(CLOCK_MONOTONIC), start) >=
          150 - EARLY_SLACK_MS);
    CHECK_EQ(mqt_curmsgs(q), 1);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* tv_nsec outside [0, 1e9) is EINVAL when the call would block. */
static void test_bad_timespec_einval(void)
{
    static const long bad_nsec[] = { 1000000000L, -1L, LONG_MAX, LONG_MIN,
                                     1000000001L };
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "badts", O_RDWR, 1, 64);
    time_t future = time(NULL) + 3600;

    for (size_t i = 0; i < sizeof bad_nsec / sizeof bad_nsec[0]; i++) {
        struct timespec f = ts_of(future, bad_nsec[i]);
        struct timespec p = ts_of(0, bad_nsec[i]);
        /* Empty queue: receive would block. */
        if (!CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &f), EINVAL) ||
            !CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &p), EINVAL))
            printf("  with tv_nsec %ld\n", bad_nsec[i]);
    }
    fill(q, 1);
    for (size_t i = 0; i < sizeof bad_nsec / sizeof bad_nsec[0]; i++) {
        struct timespec f = ts_of(future, bad_nsec[i]);
        struct timespec p = ts_of(0, bad_nsec[i]);
        /* Full queue: send would block. */
        if (!CHECK_ERR(mq_timedsend(q, "x", 1, 0, &f), EINVAL) ||
            !CHECK_ERR(mq_timedsend(q, "x", 1, 0, &p), EINVAL))
            printf("  with tv_nsec %ld\n", bad_nsec[i]);
    }
    CHECK_EQ(mqt_curmsgs(q), 1);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* When the call would not block, POSIX lets an implementation skip the
 * timespec check: success and EINVAL are both right, anything else is
 * not.  A success must have done the work. */
static void test_bad_timespec_no_block(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec bad = ts_of(time(NULL) + 3600, 1000000000L);
    mqd_t q = mqt_create(name, "badts-noblock", O_RDWR, 2, 64);
    long r;

    errno = 0;
    r = mq_timedsend(q, "s", 1, 0, &bad);
    CHECK(r == 0 || (r == -1 && errno == EINVAL));
    CHECK_EQ(mqt_curmsgs(q), r == 0 ? 1 : 0);

    fill(q, 1);
    errno = 0;
    r = mq_timedreceive(q, buf, sizeof buf, NULL, &bad);
    CHECK(r == 1 || (r == -1 && errno == EINVAL));
    if (r == -1)
        printf("  (this implementation checks the timespec even when the "
               "call need not block)\n");

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A negative tv_sec is a time before the epoch: in the past.  An empty
 * queue must not block; POSIX says ETIMEDOUT, but EINVAL is accepted. */
static void test_negative_tv_sec(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec neg = ts_of(-1, 0);
    mqd_t q = mqt_create(name, "negsec", O_RDWR, 1, 64);
    long r;

    errno = 0;
    r = mq_timedreceive(q, buf, sizeof buf, NULL, &neg);
    CHECK(r == -1 && (errno == ETIMEDOUT || errno == EINVAL));
    fill(q, 1);
    errno = 0;
    r = mq_timedsend(q, "x", 1, 0, &neg);
    CHECK(r == -1 && (errno == ETIMEDOUT || errno == EINVAL));
    CHECK_EQ(mqt_curmsgs(q), 1);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* O_NONBLOCK wins: EAGAIN, not ETIMEDOUT, whatever the deadline. */
static void test_nonblock_ignores_deadline(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec past = mqt_deadline_ms(-1000), future = mqt_deadline_ms(5000);
    mqd_t q = mqt_create(name, "nonblock", O_RDWR | O_NONBLOCK, 1, 64);

    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &past), EAGAIN);
    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &future), EAGAIN);
    fill(q, 1);
    CHECK_ERR(mq_timedsend(q, "x", 1, 0, &past), EAGAIN);
    CHECK_ERR(mq_timedsend(q, "x", 1, 0, &future), EAGAIN);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- huge deadlines, and a timed wait ended early ------------------------ */

struct sender_arg {
    mqd_t q;
    long delay_ms;
};

static void *delayed_send(void *arg)
{
    struct sender_arg *a = arg;
    mqt_sleep_ms(a->delay_ms);
    if (mq_send(a->q, "later", 5, 8) == -1)
        printf("delayed_send: mq_send: %s\n", mqt_errname(errno));
    return NULL;
}

static void *delayed_receive(void *arg)
{
    struct sender_arg *a = arg;
    char buf[64];
    mqt_sleep_ms(a->delay_ms);
    if (mq_receive(a->q, buf, sizeof buf, NULL) == -1)
        printf("delayed_receive: mq_receive: %s\n", mqt_errname(errno));
    return NULL;
}

/* A deadline of the largest time_t neither overflows into the past nor is
 * rejected: calls that can proceed do, and blocked calls really wait. */
static void test_huge_deadline(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec huge = ts_of(MQT_TIME_T_MAX, 999999999L);
    struct timespec big = ts_of(MQT_TIME_T_MAX / 2, 0);
    struct sender_arg a;
    pthread_t t;
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "huge", O_RDWR, 1, 64);

    CHECK_OK(mq_timedsend(q, "now", 3, 1, &huge));
    CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &huge), 3);
    CHECK_EQ(prio, 1);
    CHECK_OK(mq_timedsend(q, "now", 3, 2, &big));
    CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &big), 3);
    CHECK_EQ(prio, 2);

    /* Empty queue: the receive waits for the message sent later. */
    a.q = q;
    a.delay_ms = 100;
    if (CHECK_EQ(pthread_create(&t, NULL, delayed_send, &a), 0)) {
        CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &huge), 5);
        CHECK(memcmp(buf, "later", 5) == 0);
        CHECK_EQ(prio, 8);
        pthread_join(t, NULL);
    }

    /* Full queue: the send waits for room. */
    fill(q, 1);
    if (CHECK_EQ(pthread_create(&t, NULL, delayed_receive, &a), 0)) {
        CHECK_OK(mq_timedsend(q, "room", 4, 3, &huge));
        pthread_join(t, NULL);
        CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
        CHECK_EQ(prio, 3);
    }

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A timed receive is satisfied by a message that arrives before the
 * deadline, and a timed send by room that appears before it. */
static void test_timed_wait_satisfied(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec deadline;
    struct sender_arg a;
    pthread_t t;
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "satisfied", O_RDWR, 1, 64);

    a.q = q;
    a.delay_ms = 100;
    if (CHECK_EQ(pthread_create(&t, NULL, delayed_send, &a), 0)) {
        deadline = mqt_deadline_ms(10000);
        CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &deadline), 5);
        CHECK(memcmp(buf, "later", 5) == 0);
        CHECK_EQ(prio, 8);
        pthread_join(t, NULL);
    }

    fill(q, 1);
    if (CHECK_EQ(pthread_create(&t, NULL, delayed_receive, &a), 0)) {
        deadline = mqt_deadline_ms(10000);
        CHECK_OK(mq_timedsend(q, "room", 4, 3, &deadline));
        pthread_join(t, NULL);
        CHECK_EQ(mqt_curmsgs(q), 1);
    }

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* The timed calls share the other checks of mq_send/mq_receive. */
static void test_timed_other_errors(void)
{
    char name[MQT_NAME_LEN], buf[65];
    struct timespec future = mqt_deadline_ms(5000);
    mqd_t q = mqt_create(name, "timed-errors", O_RDWR, 2, 64);
    mqd_t r;

    memset(buf, 'b', sizeof buf);
    CHECK_ERR(mq_timedsend(q, "x", 1, MQT_PRIO_LIMIT, &future), EINVAL);
    CHECK_ERR(mq_timedsend(q, buf, 65, 0, &future), EMSGSIZE);
    CHECK_OK(mq_timedsend(q, "x", 1, 0, &future));
    CHECK_ERR(mq_timedreceive(q, buf, 63, NULL, &future), EMSGSIZE);
    CHECK_OK(r = mq_open(name, O_RDONLY));
    CHECK_ERR(mq_timedsend(r, "x", 1, 0, &future), EBADF);
    CHECK_OK(mq_close(r));
    CHECK_OK(r = mq_open(name, O_WRONLY));
    CHECK_ERR(mq_timedreceive(r, buf, sizeof buf, NULL, &future), EBADF);
    CHECK_OK(mq_close(r));
    CHECK_ERR(mq_timedreceive((mqd_t)-1, buf, sizeof buf, NULL, &future), EBADF);
    CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, NULL, &future), 1);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

int main(void)
{
    mqt_init("timed");
    MQT_RUN(test_past_deadline);
    MQT_RUN(test_future_deadline_times_out);
    MQT_RUN(test_bad_timespec_einval);
    MQT_RUN(test_bad_timespec_no_block);
    MQT_RUN(test_negative_tv_sec);
    MQT_RUN(test_nonblock_ignores_deadline);
    MQT_RUN(test_huge_deadline);
    MQT_RUN(test_timed_wait_satisfied);
    MQT_RUN(test_timed_other_errors);
    return mqt_finish();
}
