/*
 * stopped_holder.c - a process stopped (SIGSTOP) while it holds the queue
 * lock delays only the callers that must wait for it: a timed receive
 * ends at its deadline, a non-blocking one fails with EAGAIN at once, a
 * blocking one ends with EINTR when a handler without SA_RESTART runs, a
 * thread blocked in one is cancelled promptly, mq_getattr answers; and
 * nothing queued is lost once the holder is gone.
 *
 * The kernel's queues have no lock a process can hold, and shmq's is
 * held by a helper that the test harness names in SHMQ_TEST_HOLDER (a
 * shell command; the queue's name is passed in SHMQ_TEST_QUEUE). Without
 * both, the stopped-holder part is skipped with a reason.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <pthread.h>

/* How late a call may return after its deadline, its signal or its
 * cancellation. */
#define LATE_MS 50

static char name[MQT_NAME_LEN];
static mqd_t q = (mqd_t)-1;

/* Whether the queue is shmq's: its file is in the queue directory. */
static int is_shmq_file(const char *qname)
{
    const char *dir = getenv("SHMQ_DIR");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s", dir ? dir : "/dev/shm/shmq", qname);
    return access(path, F_OK) == 0;
}

/* Starts the holder and waits until it says it holds the lock; its pid,
 * or -1. */
static pid_t start_holder(const char *cmd)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        unsetenv("LD_PRELOAD");
        setenv("SHMQ_TEST_QUEUE", name, 1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    /* Read until "SHMQ-LOCKED" (the helper's harness prints first). */
    char buf[4096];
    size_t have = 0;
    int locked = 0;
    while (!locked && have < sizeof buf - 1) {
        ssize_t n = read(fds[0], buf + have, sizeof buf - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = 0;
        locked = strstr(buf, "SHMQ-LOCKED") != NULL;
    }
    close(fds[0]);
    if (!locked) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

static void wait_stopped(pid_t pid)
{
    int st;
    CHECK_EQ(waitpid(pid, &st, WUNTRACED), pid);
    CHECK(WIFSTOPPED(st));
}

/* ---- EINTR ------------------------------------------------------------ */

static volatile sig_atomic_t alarms;
static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

struct poke {
    pthread_t target;
    struct timespec sent;
};

static void *poke_later(void *arg)
{
    struct poke *p = arg;
    mqt_sleep_ms(100);
    p->sent = mqt_now(CLOCK_MONOTONIC);
    pthread_kill(p->target, SIGALRM);
    return NULL;
}

static void blocking_receive_ends_with_eintr(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_alarm; /* no SA_RESTART */
    CHECK_OK(sigaction(SIGALRM, &sa, &old));
    struct poke p;
    p.target = pthread_self();
    pthread_t t;
    char buf[64];
    alarms = 0;
    CHECK_EQ(pthread_create(&t, NULL, poke_later, &p), 0);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EINTR);
    struct timespec back = mqt_now(CLOCK_MONOTONIC);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(alarms, 1);
    long long late = mqt_ts_diff_ms(back, p.sent);
    if (!CHECK(late <= LATE_MS))
        printf("# EINTR came %lld ms after the signal\n", late);
    sigaction(SIGALRM, &old, NULL);
}

/* ---- cancellation ----------------------------------------------------- */

static volatile sig_atomic_t cleaned;
static void cleanup(void *arg)
{
    (void)arg;
    cleaned = 1;
}

static void *receive_forever(void *arg)
{
    char buf[64];
    (void)arg;
    pthread_cleanup_push(cleanup, NULL);
    mq_receive(q, buf, sizeof buf, NULL);
    pthread_cleanup_pop(0);
    return (void *)1;
}

static void blocked_thread_is_cancelled(void)
{
    pthread_t t;
    void *ret = NULL;
    cleaned = 0;
    CHECK_EQ(pthread_create(&t, NULL, receive_forever, NULL), 0);
    mqt_sleep_ms(100);
    struct timespec sent = mqt_now(CLOCK_MONOTONIC);
    CHECK_EQ(pthread_cancel(t), 0);
    CHECK_EQ(pthread_join(t, &ret), 0);
    long long late = mqt_ts_diff_ms(mqt_now(CLOCK_MONOTONIC), sent);
    CHECK(ret == PTHREAD_CANCELED);
    CHECK_EQ(cleaned, 1);
    if (!CHECK(late <= LATE_MS))
        printf("# the cancellation took %lld ms\n", late);
}

/* ---- the rest --------------------------------------------------------- */

static void timed_receive_ends_at_its_deadline(void)
{
    char buf[64];
    struct timespec deadline = mqt_deadline_ms(100);
    CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &deadline), ETIMEDOUT);
    long long late = mqt_ts_diff_ms(mqt_now(CLOCK_REALTIME), deadline);
    CHECK(late >= 0);
    if (!CHECK(late <= LATE_MS))
        printf("# ETIMEDOUT came %lld ms after the deadline\n", late);
    deadline = mqt_deadline_ms(100);
    CHECK_ERR(mq_timedsend(q, "x", 1, 0, &deadline), ETIMEDOUT);
    late = mqt_ts_diff_ms(mqt_now(CLOCK_REALTIME), deadline);
    CHECK(late <= LATE_MS);
}

static void nonblocking_receive_fails_at_once(void)
{
    char buf[64];
    mqd_t nb = mq_open(name, O_RDWR | O_NONBLOCK);
    CHECK(nb != (mqd_t)-1);
    for (int i = 0; i < 3; i++) {
        struct timespec t0 = mqt_now(CLOCK_MONOTONIC);
        CHECK_ERR(mq_receive(nb, buf, sizeof buf, NULL), EAGAIN);
        long long took = mqt_ts_diff_ms(mqt_now(CLOCK_MONOTONIC), t0);
        if (!CHECK(took <= 30))
            printf("# EAGAIN took %lld ms\n", took);
        CHECK_ERR(mq_send(nb, "x", 1, 0), EAGAIN);
    }
    CHECK_OK(mq_close(nb));
}

static void getattr_answers(void)
{
    struct mq_attr a;
    struct timespec t0 = mqt_now(CLOCK_MONOTONIC);
    CHECK_OK(mq_getattr(q, &a));
    /* Read without the lock: the holder is taking one message out. */
    CHECK(a.mq_curmsgs == 2 || a.mq_curmsgs == 3);
    CHECK(mqt_ts_diff_ms(mqt_now(CLOCK_MONOTONIC), t0) <= LATE_MS);
}

static void nothing_lost(void)
{
    char buf[64];
    unsigned prio = 0;
    struct timespec deadline = mqt_deadline_ms(10000);
    for (unsigned i = 3; i-- > 0;) {
        CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &deadline), 2);
        CHECK_EQ(prio, i);
        CHECK(buf[0] == 'm' && buf[1] == (char)('0' + i));
    }
    CHECK_EQ(mqt_curmsgs(q), 0);
    CHECK_OK(mq_send(q, "ok", 2, 1));
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 2);
}

int main(void)
{
    mqt_init("stopped_holder");
    q = mqt_create(name, "stopped", O_RDWR, 4, 64);
    CHECK(q != (mqd_t)-1);
    for (unsigned i = 0; i < 3; i++) {
        char m[2] = { 'm', (char)('0' + i) };
        CHECK_OK(mq_send(q, m, 2, i));
    }
    const char *cmd = getenv("SHMQ_TEST_HOLDER");
    if (!is_shmq_file(name)) {
        SKIP("the kernel's queues have no lock a process can hold and be "
             "stopped with");
        return mqt_finish();
    }
    if (cmd == NULL) {
        SKIP("SHMQ_TEST_HOLDER names no helper that holds shmq's lock");
        return mqt_finish();
    }
    pid_t holder = start_holder(cmd);
    if (!CHECK(holder > 0))
        return mqt_finish();
    CHECK_OK(kill(holder, SIGSTOP));
    wait_stopped(holder);
    MQT_RUN(timed_receive_ends_at_its_deadline);
    MQT_RUN(nonblocking_receive_fails_at_once);
    MQT_RUN(blocking_receive_ends_with_eintr);
    MQT_RUN(blocked_thread_is_cancelled);
    MQT_RUN(getattr_answers);
    /* Continued, the helper still holds the lock (it never lets go);
     * killed, its half-done receive is undone. */
    CHECK_OK(kill(holder, SIGCONT));
    CHECK_OK(kill(holder, SIGKILL));
    CHECK_EQ(waitpid(holder, NULL, 0), holder);
    MQT_RUN(nothing_lost);
    CHECK_OK(mq_close(q));
    return mqt_finish();
}
