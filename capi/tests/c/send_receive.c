/*
 * send_receive.c - mq_send and mq_receive: priority order, FIFO within a
 * priority, the priority limit, EBADF for the wrong access mode, EMSGSIZE
 * on both sides, zero-length messages, EAGAIN when full or empty, returned
 * length and priority, blocking calls woken by another thread, and many
 * concurrent senders and receivers.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <pthread.h>

struct tagged {
    unsigned prio;
    char text[16];
};

/* Send msgs[0..n) and check they come back highest priority first, in
 * send order within a priority. */
static void send_and_expect_order(mqd_t q, const struct tagged *msgs, int n)
{
    int taken[16] = { 0 };
    char buf[64];

    for (int i = 0; i < n; i++)
        CHECK_OK(mq_send(q, msgs[i].text, strlen(msgs[i].text), msgs[i].prio));
    for (int k = 0; k < n; k++) {
        /* The expected message: highest priority, then lowest index. */
        int want = -1;
        unsigned prio = 12345;
        ssize_t len;
        for (int i = 0; i < n; i++)
            if (!taken[i] && (want < 0 || msgs[i].prio > msgs[want].prio))
                want = i;
        taken[want] = 1;
        memset(buf, 0, sizeof buf);
        len = mq_receive(q, buf, sizeof buf, &prio);
        if (!(CHECK_EQ(len, (long long)strlen(msgs[want].text)) &&
              CHECK_EQ(prio, msgs[want].prio) &&
              CHECK(strcmp(buf, msgs[want].text) == 0)))
            printf("  receive #%d: got \"%s\" prio %u, expected \"%s\" prio %u\n",
                   k, buf, prio, msgs[want].text, msgs[want].prio);
    }
}

static void test_priority_order(void)
{
    static const struct tagged msgs[] = {
        { 0, "a0" },   { 5, "b5" },    { 32767, "c-max" }, { 5, "d5" },
        { 0, "e0" },   { 1, "f1" },    { 32767, "g-max" }, { 100, "h100" },
        { 5, "i5" },   { 0, "j0" },
    };
    char name[MQT_NAME_LEN];
    struct mq_attr got;
    mqd_t q = mqt_create(name, "prio", O_RDWR | O_NONBLOCK, 10, 64);

    send_and_expect_order(q, msgs, 10);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Many rounds of pseudo-random priorities over the whole range, with
 * repeats, plus interleaved sends and receives. */
static void test_priority_order_many(void)
{
    char name[MQT_NAME_LEN], buf[64];
    unsigned seed = 12345, prio;
    mqd_t q = mqt_create(name, "prio-many", O_RDWR | O_NONBLOCK, 10, 64);

    for (int round = 0; round < 40; round++) {
        struct tagged msgs[10];
        for (int i = 0; i < 10; i++) {
            seed = seed * 1103515245u + 12345u;
            switch ((seed >> 16) % 4) {
            case 0: msgs[i].prio = 0; break;
            case 1: msgs[i].prio = MQT_PRIO_LIMIT - 1; break;
            case 2: msgs[i].prio = (seed >> 8) % 4; break; /* repeats */
            default: msgs[i].prio = (seed >> 4) % MQT_PRIO_LIMIT; break;
            }
            snprintf(msgs[i].text, sizeof msgs[i].text, "r%d-%d", round, i);
        }
        send_and_expect_order(q, msgs, 10);
    }

    /* Interleaved: a later high-priority message overtakes queued ones,
     * an equal-priority one queues behind them. */
    CHECK_OK(mq_send(q, "low1", 4, 1));
    CHECK_OK(mq_send(q, "low2", 4, 1));
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
    CHECK(memcmp(buf, "low1", 4) == 0);
    CHECK_OK(mq_send(q, "high", 4, 2));
    CHECK_OK(mq_send(q, "low3", 4, 1));
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
    CHECK(memcmp(buf, "high", 4) == 0 && prio == 2);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
    CHECK(memcmp(buf, "low2", 4) == 0 && prio == 1);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
    CHECK(memcmp(buf, "low3", 4) == 0 && prio == 1);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, &prio), EAGAIN);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Priorities >= MQ_PRIO_MAX (32768) are EINVAL, checked before the
 * descriptor. */
static void test_priority_limit(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr got;
    mqd_t q = mqt_create(name, "prio-limit", O_RDWR | O_NONBLOCK, 4, 64);
    mqd_t r;
    unsigned prio = 0;

    CHECK_ERR(mq_send(q, "x", 1, MQT_PRIO_LIMIT), EINVAL);
    CHECK_ERR(mq_send(q, "x", 1, MQT_PRIO_LIMIT + 1), EINVAL);
    CHECK_ERR(mq_send(q, "x", 1, UINT_MAX), EINVAL);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 0);

    /* EINVAL wins over EBADF: a read-only and an invalid descriptor. */
    CHECK_OK(r = mq_open(name, O_RDONLY));
    CHECK_ERR(mq_send(r, "x", 1, MQT_PRIO_LIMIT), EINVAL);
    CHECK_ERR(mq_send((mqd_t)-1, "x", 1, MQT_PRIO_LIMIT), EINVAL);
    CHECK_ERR(mq_send(r, "x", 1, 0), EBADF);
    CHECK_OK(mq_close(r));

    CHECK_OK(mq_send(q, "max", 3, MQT_PRIO_LIMIT - 1));
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 3);
    CHECK_EQ(prio, MQT_PRIO_LIMIT - 1);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_wrong_access_mode_ebadf(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr got;
    mqd_t q = mqt_create(name, "accmode", O_RDWR | O_NONBLOCK, 4, 64);
    mqd_t r, w;

    CHECK_OK(r = mq_open(name, O_RDONLY | O_NONBLOCK));
    CHECK_OK(w = mq_open(name, O_WRONLY | O_NONBLOCK));
    CHECK_OK(mq_send(q, "m", 1, 0));

    CHECK_ERR(mq_send(r, "x", 1, 0), EBADF);
    CHECK_ERR(mq_receive(w, buf, sizeof buf, NULL), EBADF);
    CHECK_ERR(mq_send((mqd_t)-1, "x", 1, 0), EBADF);
    CHECK_ERR(mq_receive((mqd_t)-1, buf, sizeof buf, NULL), EBADF);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 1); /* nothing sent, nothing taken */

    CHECK_OK(mq_send(w, "y", 1, 0));
    CHECK_EQ(mq_receive(r, buf, sizeof buf, NULL), 1);
    CHECK_EQ(mq_receive(r, buf, sizeof buf, NULL), 1);

    CHECK_OK(mq_close(r));
    CHECK_OK(mq_close(w));
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_msgsize_limits(void)
{
    char name[MQT_NAME_LEN], msg[65], buf[128];
    struct mq_attr got;
    mqd_t q = mqt_create(name, "msgsize", O_RDWR | O_NONBLOCK, 4, 64);
    unsigned prio = 0;

    memset(msg, 'm', sizeof msg);
    /* Sending: len > msgsize is EMSGSIZE, len == msgsize is fine. */
    CHECK_ERR(mq_send(q, msg, 65, 0), EMSGSIZE);
    CHECK_ERR(mq_send(q, msg, 1000000, 0), EMSGSIZE);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 0);
    CHECK_OK(mq_send(q, msg, 64, 9));

    /* Receiving: a buffer smaller than msgsize is EMSGSIZE, even for a
     * short message, and the message stays queued. */
    CHECK_OK(mq_send(q, "s", 1, 0));
    CHECK_ERR(mq_receive(q, buf, 63, NULL), EMSGSIZE);
    CHECK_ERR(mq_receive(q, buf, 1, NULL), EMSGSIZE);
    CHECK_ERR(mq_receive(q, buf, 0, NULL), EMSGSIZE);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 2);
    /* Exactly msgsize, and larger, are fine. */
    CHECK_EQ(mq_receive(q, buf, 64, &prio), 64);
    CHECK_EQ(prio, 9);
    CHECK(memcmp(buf, msg, 64) == 0);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 1);
    CHECK_EQ(prio, 0);

    /* On an empty queue the buffer check still comes first. */
    CHECK_ERR(mq_receive(q, buf, 63, NULL), EMSGSIZE);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Every byte value goes through unchanged, whatever the length. */
static void test_payload_integrity(void)
{
    char name[MQT_NAME_LEN];
    unsigned char msg[256], buf[256];
    mqd_t q = mqt_create(name, "payload", O_RDWR | O_NONBLOCK, 4, 256);

    for (int i = 0; i < 256; i++)
        msg[i] = (unsigned char)(255 - i); /* includes NUL bytes */
    for (size_t len = 1; len <= 256; len = len * 2 + 1) {
        size_t n = len > 256 ? 256 : len;
        memset(buf, 0xAA, sizeof buf);
        CHECK_OK(mq_send(q, (const char *)msg, n, 0));
        CHECK_EQ(mq_receive(q, (char *)buf, sizeof buf, NULL), (long long)n);
        CHECK(memcmp(buf, msg, n) == 0);
    }
    /* A full-size message whose first byte is NUL. */
    msg[0] = 0;
    CHECK_OK(mq_send(q, (const char *)msg, 256, 1));
    CHECK_EQ(mq_receive(q, (char *)buf, sizeof buf, NULL), 256);
    CHECK(memcmp(buf, msg, 256) == 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_zero_length(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr got;
    mqd_t q = mqt_create(name, "zero", O_RDWR | O_NONBLOCK, 4, 64);
    unsigned prio = 0;

    CHECK_OK(mq_send(q, "", 0, 7));
    CHECK_OK(mq_send(q, "abc", 3, 7));
    CHECK_OK(mq_send(q, "", 0, 8));
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 3); /* empty messages count */

    buf[0] = 'z';
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 0);
    CHECK_EQ(prio, 8);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 0);
    CHECK_EQ(prio, 7);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 3);
    CHECK_EQ(prio, 7);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, &prio), EAGAIN);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_eagain_full_and_empty(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr got;
    mqd_t q = mqt_create(name, "eagain", O_RDWR | O_NONBLOCK, 4, 64);
    unsigned prio = 0;

    CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
    for (unsigned i = 0; i < 4; i++)
        CHECK_OK(mq_send(q, "f", 1, i));
    CHECK_ERR(mq_send(q, "g", 1, 0), EAGAIN);
    CHECK_ERR(mq_send(q, "g", 1, 100), EAGAIN); /* priority does not help */
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 4);

    /* One receive makes room for exactly one send. */
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 1);
    CHECK_EQ(prio, 3);
    CHECK_OK(mq_send(q, "h", 1, 0));
    CHECK_ERR(mq_send(q, "i", 1, 0), EAGAIN);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* The returned length is the message's, not the buffer's; msg_prio may be
 * NULL. */
static void test_length_and_null_prio(void)
{
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "nullprio", O_RDWR | O_NONBLOCK, 4, 64);

    CHECK_OK(mq_send(q, "seventeen bytes!!", 17, 4));
    CHECK_OK(mq_send(q, "two", 3, 2));
    memset(buf, 0, sizeof buf);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 17);
    CHECK(memcmp(buf, "seventeen bytes!!", 17) == 0);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 3);
    CHECK(memcmp(buf, "two", 3) == 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A queue and its messages outlive every descriptor until unlinked. */
static void test_queue_persists_after_close(void)
{
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "persist", O_WRONLY, 4, 64);
    unsigned prio = 0;

    CHECK_OK(mq_send(q, "kept", 4, 11));
    CHECK_OK(mq_close(q));
    CHECK_OK(q = mq_open(name, O_RDONLY | O_NONBLOCK));
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
    CHECK(memcmp(buf, "kept", 4) == 0);
    CHECK_EQ(prio, 11);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- blocking, across threads ----------------------------------------- */

struct peer {
    mqd_t q;
    volatile pid_t tid;
    ssize_t result;
    int err;
    unsigned prio;
    char buf[64];
};

static void *blocking_receiver(void *arg)
{
    struct peer *p = arg;
    __atomic_store_n(&p->tid, mqt_gettid(), __ATOMIC_SEQ_CST);
    p->result = mq_receive(p->q, p->buf, sizeof p->buf, &p->prio);
    p->err = errno;
    return NULL;
}

static void *blocking_sender(void *arg)
{
    struct peer *p = arg;
    __atomic_store_n(&p->tid, mqt_gettid(), __ATOMIC_SEQ_CST);
    p->result = mq_send(p->q, "late", 4, 3);
    p->err = errno;
    return NULL;
}

/* A receive blocked on an empty queue returns the message that another
 * thread sends later. */
static void test_blocking_receive_woken(void)
{
    char name[MQT_NAME_LEN];
    struct peer p;
    pthread_t t;
    mqd_t q = mqt_create(name, "block-recv", O_RDWR, 4, 64);

    memset(&p, 0, sizeof p);
    p.q = q;
    if (!CHECK_EQ(pthread_create(&t, NULL, blocking_receiver, &p), 0))
        goto out;
    mqt_wait_thread_blocked(&p.tid);
    CHECK_OK(mq_send(q, "wake", 4, 21));
    pthread_join(t, NULL);
    CHECK_EQ(p.result, 4);
    CHECK(memcmp(p.buf, "wake", 4) == 0);
    CHECK_EQ(p.prio, 21);
out:
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A send blocked on a full queue completes once a receive makes room. */
static void test_blocking_send_woken(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr got;
    struct peer p;
    pthread_t t;
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "block-send", O_RDWR, 2, 64);

    CHECK_OK(mq_send(q, "one", 3, 1));
    CHECK_OK(mq_send(q, "two", 3, 1));
    memset(&p, 0, sizeof p);
    p.q = q;
    if (!CHECK_EQ(pthread_create(&t, NULL, blocking_sender, &p), 0))
        goto out;
    mqt_wait_thread_blocked(&p.tid);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_curmsgs, 2);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 3);
    CHECK(memcmp(buf, "one", 3) == 0);
    pthread_join(t, NULL);
    CHECK_EQ(p.result, 0);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 4);
    CHECK(memcmp(buf, "late", 4) == 0 && prio == 3); /* overtakes "two" */
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 3);
    CHECK(memcmp(buf, "two", 3) == 0);
out:
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- many threads ------------------------------------------------------- */

#define MT_SENDERS 3
#define MT_RECEIVERS 3
#define MT_PER_SENDER 2000

struct mt_shared {
    mqd_t q;
    int seen[MT_SENDERS][MT_PER_SENDER]; /* times each message was received */
    int errors;
    int order_errors;
};

struct mt_arg {
    struct mt_shared *s;
    int id;
};

static void *mt_sender(void *arg)
{
    struct mt_arg *a = arg;
    for (int i = 0; i < MT_PER_SENDER; i++) {
        int msg[2] = { a->id, i };
        if (mq_send(a->s->q, (const char *)msg, sizeof msg, 0) == -1)
            __atomic_add_fetch(&a->s->errors, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *mt_receiver(void *arg)
{
    struct mt_arg *a = arg;
    int last[MT_SENDERS];
    for (int k = 0; k < MT_SENDERS; k++)
        last[k] = -1;
    for (;;) {
        int msg[16];
        ssize_t n = mq_receive(a->s->q, (char *)msg, sizeof msg, NULL);
        if (n == -1) {
            __atomic_add_fetch(&a->s->errors, 1, __ATOMIC_RELAXED);
            return NULL;
        }
        if (n == 0)
            return NULL; /* stop marker */
        if (n != 2 * (ssize_t)sizeof(int) || msg[0] < 0 ||
            msg[0] >= MT_SENDERS || msg[1] < 0 || msg[1] >= MT_PER_SENDER) {
            __atomic_add_fetch(&a->s->errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        __atomic_add_fetch(&a->s->seen[msg[0]][msg[1]], 1, __ATOMIC_RELAXED);
        /* One receiver sees each sender's messages in send order. */
        if (msg[1] <= last[msg[0]])
            __atomic_add_fetch(&a->s->order_errors, 1, __ATOMIC_RELAXED);
        last[msg[0]] = msg[1];
    }
}

/* Several blocking senders and receivers on a small queue: every message
 * is received exactly once, and each receiver sees each sender's messages
 * in order. */
static void test_many_threads(void)
{
    static struct mt_shared s;
    struct mt_arg sa[MT_SENDERS], ra[MT_RECEIVERS];
    pthread_t st[MT_SENDERS], rt[MT_RECEIVERS];
    char name[MQT_NAME_LEN];
    int missing = 0, dup = 0, started_s = 0, started_r = 0;

    memset(&s, 0, sizeof s);
    s.q = mqt_create(name, "threads", O_RDWR, 4, 64);
    for (int i = 0; i < MT_RECEIVERS; i++) {
        ra[i].s = &s;
        ra[i].id = i;
        if (CHECK_EQ(pthread_create(&rt[i], NULL, mt_receiver, &ra[i]), 0))
            started_r++;
    }
    for (int i = 0; i < MT_SENDERS; i++) {
        sa[i].s = &s;
        sa[i].id = i;
        if (CHECK_EQ(pthread_create(&st[i], NULL, mt_sender, &sa[i]), 0))
            started_s++;
    }
    for (int i = 0; i < started_s; i++)
        pthread_join(st[i], NULL);
    for (int i = 0; i < started_r; i++)
        CHECK_OK(mq_send(s.q, "", 0, 0)); /* one stop marker each */
    for (int i = 0; i < started_r; i++)
        pthread_join(rt[i], NULL);

    for (int k = 0; k < MT_SENDERS; k++)
        for (int i = 0; i < MT_PER_SENDER; i++) {
            missing += s.seen[k][i] == 0;
            dup += s.seen[k][i] > 1;
        }
    CHECK_EQ(s.errors, 0);
    CHECK_EQ(missing, 0);
    CHECK_EQ(dup, 0);
    CHECK_EQ(s.order_errors, 0);
    CHECK_OK(mq_close(s.q));
    mqt_unlink(name);
}

int main(void)
{
    mqt_init("send_receive");
    MQT_RUN(test_priority_order);
    MQT_RUN(test_priority_order_many);
    MQT_RUN(test_priority_limit);
    MQT_RUN(test_wrong_access_mode_ebadf);
    MQT_RUN(test_msgsize_limits);
    MQT_RUN(test_payload_integrity);
    MQT_RUN(test_zero_length);
    MQT_RUN(test_eagain_full_and_empty);
    MQT_RUN(test_length_and_null_prio);
    MQT_RUN(test_queue_persists_after_close);
    MQT_RUN(test_blocking_receive_woken);
    MQT_RUN(test_blocking_send_woken);
    MQT_RUN(test_many_threads);
    return mqt_finish();
}
