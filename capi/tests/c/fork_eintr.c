/*
 * fork_eintr.c - descriptors across fork (inherited, usable, one shared
 * open description, so O_NONBLOCK set in the child shows in the parent),
 * blocking calls woken from another process, many processes on one queue,
 * and EINTR from blocked calls interrupted by a handler installed without
 * SA_RESTART, in a thread and in another process.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <pthread.h>

static volatile sig_atomic_t handled;

static void on_sigusr1(int sig)
{
    (void)sig;
    handled++;
}

/* SIGUSR1 runs on_sigusr1, without SA_RESTART. */
static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_sigusr1;
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, NULL);
}

/* ---- fork --------------------------------------------------------------- */

/* The child inherits the descriptor and can use it both ways. */
static void test_fork_inherits_descriptor(void)
{
    char name[MQT_NAME_LEN], buf[64];
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "inherit", O_RDWR, 4, 64);
    pid_t pid;

    CHECK_OK(mq_send(q, "from-parent", 11, 1));
    pid = mqt_fork();
    if (pid == 0) {
        struct timespec t = mqt_deadline_ms(5000);
        CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &t), 11);
        CHECK(memcmp(buf, "from-parent", 11) == 0);
        CHECK_EQ(prio, 1);
        CHECK_OK(mq_send(q, "from-child", 10, 2));
        mqt_child_exit();
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_EQ(mqt_curmsgs(q), 1);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 10);
    CHECK(memcmp(buf, "from-child", 10) == 0);
    CHECK_EQ(prio, 2);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Parent and child share one open description: O_NONBLOCK set or cleared
 * by mq_setattr on one side is seen on the other. */
static void test_fork_shares_nonblock(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr a;
    struct timespec past;
    mqd_t q = mqt_create(name, "share-flags", O_RDWR, 2, 64);
    pid_t pid;

    pid = mqt_fork();
    if (pid == 0) {
        struct mq_attr set;
        memset(&set, 0, sizeof set);
        set.mq_flags = O_NONBLOCK;
        CHECK_OK(mq_setattr(q, &set, NULL));
        mqt_child_exit();
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_OK(mq_getattr(q, &a));
    CHECK_EQ(a.mq_flags, O_NONBLOCK);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);

    /* And back: the parent clears it, a new child sees it cleared. */
    memset(&a, 0, sizeof a);
    CHECK_OK(mq_setattr(q, &a, NULL));
    pid = mqt_fork();
    if (pid == 0) {
        struct mq_attr got;
        CHECK_OK(mq_getattr(q, &got));
        CHECK_EQ(got.mq_flags, 0);
        past = mqt_deadline_ms(-1000);
        CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &past), ETIMEDOUT);
        mqt_child_exit();
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* The child closing its copy (and exiting) leaves the parent's working. */
static void test_child_close_keeps_parent(void)
{
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "child-close", O_RDWR | O_NONBLOCK, 2, 64);
    pid_t pid;

    pid = mqt_fork();
    if (pid == 0) {
        CHECK_OK(mq_send(q, "c", 1, 0));
        CHECK_OK(mq_close(q));
        CHECK_ERR(mq_send(q, "c", 1, 0), EBADF);
        mqt_child_exit();
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_OK(mq_send(q, "p", 1, 0));
    CHECK_EQ(mqt_curmsgs(q), 2);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_EQ(buf[0], 'c');
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_EQ(buf[0], 'p');
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- blocking across processes ------------------------------------------ */

/* A child blocked in mq_receive is woken by the parent's mq_send; the
 * child uses either the inherited descriptor or its own mq_open. */
static void receive_woken_by_other_process(int own_open)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, own_open ? "xproc-recv-open" : "xproc-recv",
                         O_RDWR, 2, 64);
    int fds[2];
    pid_t pid;

    if (!CHECK_OK(pipe(fds)))
        return;
    pid = mqt_fork();
    if (pid == 0) {
        char buf[64];
        unsigned prio = 0;
        mqd_t r = q;
        if (own_open)
            CHECK_OK(r = mq_open(name, O_RDONLY));
        mqt_say_ready(fds[1]);
        CHECK_EQ(mq_receive(r, buf, sizeof buf, &prio), 4);
        CHECK(memcmp(buf, "ping", 4) == 0);
        CHECK_EQ(prio, 9);
        mqt_child_exit();
    }
    if (CHECK(mqt_wait_ready(fds[0]))) {
        mqt_wait_blocked(pid);
        CHECK_OK(mq_send(q, "ping", 4, 9));
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    close(fds[0]);
    close(fds[1]);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_receive_woken_by_other_process(void)
{
    receive_woken_by_other_process(0);
    receive_woken_by_other_process(1);
}

/* The parent blocks in a receive; a child sends once it sees the parent
 * asleep. */
static void test_parent_receive_woken_by_child(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct timespec deadline;
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "xproc-parent", O_RDONLY, 2, 64);
    pid_t pid;

    pid = mqt_fork();
    if (pid == 0) {
        mqd_t w;
        CHECK_OK(w = mq_open(name, O_WRONLY));
        mqt_wait_blocked(getppid());
        CHECK_OK(mq_send(w, "pong", 4, 3));
        mqt_child_exit();
    }
    deadline = mqt_deadline_ms(10000);
    CHECK_EQ(mq_timedreceive(q, buf, sizeof buf, &prio, &deadline), 4);
    CHECK(memcmp(buf, "pong", 4) == 0);
    CHECK_EQ(prio, 3);
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A child blocked in mq_send on a full queue completes when the parent
 * receives. */
static void test_send_woken_by_other_process(void)
{
    char name[MQT_NAME_LEN], buf[64];
    unsigned prio = 0;
    mqd_t q = mqt_create(name, "xproc-send", O_RDWR, 1, 64);
    int fds[2];
    pid_t pid;

    if (!CHECK_OK(pipe(fds)))
        return;
    CHECK_OK(mq_send(q, "first", 5, 1));
    pid = mqt_fork();
    if (pid == 0) {
        mqd_t w;
        CHECK_OK(w = mq_open(name, O_WRONLY));
        mqt_say_ready(fds[1]);
        CHECK_OK(mq_send(w, "second", 6, 2));
        mqt_child_exit();
    }
    if (CHECK(mqt_wait_ready(fds[0]))) {
        mqt_wait_blocked(pid);
        CHECK_EQ(mqt_curmsgs(q), 1); /* the child has not got in */
        CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 5);
        CHECK(memcmp(buf, "first", 5) == 0);
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 6);
    CHECK(memcmp(buf, "second", 6) == 0);
    CHECK_EQ(prio, 2);
    close(fds[0]);
    close(fds[1]);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

#define XP_SENDERS 3
#define XP_PER_SENDER 300

/* Several processes send through a small queue to the parent: nothing is
 * lost or duplicated and each sender's messages arrive in order. */
static void test_many_processes(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "xproc-many", O_RDONLY, 4, 64);
    pid_t pids[XP_SENDERS];
    int next[XP_SENDERS] = { 0 }, bad = 0;

    for (int k = 0; k < XP_SENDERS; k++) {
        pids[k] = mqt_fork();
        if (pids[k] == 0) {
            mqd_t w = mq_open(name, O_WRONLY);
            if (!CHECK_OK(w))
                mqt_child_exit();
            for (int i = 0; i < XP_PER_SENDER; i++) {
                int msg[2] = { k, i };
                if (!CHECK_OK(mq_send(w, (const char *)msg, sizeof msg, 0)))
                    break;
            }
            mqt_child_exit();
        }
    }
    for (int n = 0; n < XP_SENDERS * XP_PER_SENDER; n++) {
        int msg[16];
        struct timespec t = mqt_deadline_ms(10000);
        ssize_t len = mq_timedreceive(q, (char *)msg, sizeof msg, NULL, &t);
        if (!CHECK_EQ(len, 2 * (long long)sizeof(int)))
            break;
        if (msg[0] < 0 || msg[0] >= XP_SENDERS || msg[1] != next[msg[0]]) {
            if (bad++ < 5)
                printf("  unexpected message {%d, %d}\n", msg[0], msg[1]);
            continue;
        }
        next[msg[0]]++;
    }
    CHECK_EQ(bad, 0);
    for (int k = 0; k < XP_SENDERS; k++) {
        CHECK_EQ(next[k], XP_PER_SENDER);
        CHECK_EQ(mqt_wait_child(pids[k], 10000), 0);
    }
    CHECK_EQ(mqt_curmsgs(q), 0);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- EINTR -------------------------------------------------------------- */

enum op { OP_RECEIVE, OP_SEND, OP_TIMEDRECEIVE, OP_TIMEDSEND };

static const char *const op_names[] = { "mq_receive", "mq_send",
                                        "mq_timedreceive", "mq_timedsend" };

/* Run a call that should block (empty or full queue). */
static ssize_t blocking_call(mqd_t q, enum op op)
{
    char buf[64];
    struct timespec far = mqt_deadline_ms(60000);
    switch (op) {
    case OP_RECEIVE: return mq_receive(q, buf, sizeof buf, NULL);
    case OP_SEND: return mq_send(q, "blocked", 7, 0);
    case OP_TIMEDRECEIVE: return mq_timedreceive(q, buf, sizeof buf, NULL, &far);
    case OP_TIMEDSEND: return mq_timedsend(q, "blocked", 7, 0, &far);
    }
    return 0;
}

struct blocker {
    mqd_t q;
    enum op op;
    volatile pid_t tid;
    volatile int done;
    ssize_t result;
    int err;
};

static void *blocker_thread(void *arg)
{
    struct blocker *b = arg;
    __atomic_store_n(&b->tid, mqt_gettid(), __ATOMIC_SEQ_CST);
    b->result = blocking_call(b->q, b->op);
    b->err = errno;
    __atomic_store_n(&b->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* Unblock a peer the signal failed to interrupt, so the test can end. */
static void unblock(mqd_t q, enum op op)
{
    char buf[64];
    if (op == OP_RECEIVE || op == OP_TIMEDRECEIVE)
        mq_send(q, "unblock", 7, 0);
    else
        mq_receive(q, buf, sizeof buf, NULL);
}

/* Run the call in a thread and, once it blocks, send it SIGUSR1 until the
 * call returns (a signal may come before the call blocks).  Fills in *b;
 * returns 0 if the thread could not be started. */
static int interrupt_thread(mqd_t q, enum op op, struct blocker *b)
{
    pthread_t t;
    int signals = 0;

    memset(b, 0, sizeof *b);
    b->q = q;
    b->op = op;
    if (!CHECK_EQ(pthread_create(&t, NULL, blocker_thread, b), 0))
        return 0;
    mqt_wait_thread_blocked(&b->tid);
    while (!__atomic_load_n(&b->done, __ATOMIC_SEQ_CST) && signals < 250) {
        pthread_kill(t, SIGUSR1);
        signals++;
        mqt_sleep_ms(20);
    }
    if (!CHECK(__atomic_load_n(&b->done, __ATOMIC_SEQ_CST)))
        unblock(q, op);
    pthread_join(t, NULL);
    return 1;
}

/* A thread blocked in the call gets SIGUSR1 (handler, no SA_RESTART) and
 * must fail with EINTR; the queue is unchanged. */
static void eintr_in_thread(enum op op)
{
    char name[MQT_NAME_LEN];
    int full = op == OP_SEND || op == OP_TIMEDSEND;
    mqd_t q = mqt_create(name, "eintr-thread", O_RDWR, 2, 64);
    struct blocker b;

    printf("  %s in a thread\n", op_names[op]);
    if (full) {
        CHECK_OK(mq_send(q, "1", 1, 0));
        CHECK_OK(mq_send(q, "2", 1, 0));
    }
    handled = 0;
    if (interrupt_thread(q, op, &b)) {
        CHECK_EQ(b.result, -1);
        CHECK_EQ(b.err, EINTR);
        CHECK(handled > 0);
        CHECK_EQ(mqt_curmsgs(q), full ? 2 : 0);
    }
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_eintr_thread(void)
{
    eintr_in_thread(OP_RECEIVE);
    eintr_in_thread(OP_SEND);
    eintr_in_thread(OP_TIMEDRECEIVE);
    eintr_in_thread(OP_TIMEDSEND);
}

/* The same in a child process signalled by the parent with kill(). */
static void eintr_in_process(enum op op)
{
    char name[MQT_NAME_LEN];
    int full = op == OP_SEND || op == OP_TIMEDSEND;
    mqd_t q = mqt_create(name, "eintr-proc", O_RDWR, 2, 64);
    int fds[2], status = -1, signals = 0;
    pid_t pid;

    printf("  %s in another process\n", op_names[op]);
    if (full) {
        CHECK_OK(mq_send(q, "1", 1, 0));
        CHECK_OK(mq_send(q, "2", 1, 0));
    }
    if (!CHECK_OK(pipe(fds)))
        goto out;
    pid = mqt_fork();
    if (pid == 0) {
        ssize_t r;
        int err;
        handled = 0;
        install_handler();
        mqt_say_ready(fds[1]);
        r = blocking_call(q, op);
        err = errno;
        CHECK_EQ(r, -1);
        CHECK_EQ(err, EINTR);
        CHECK(handled > 0);
        mqt_child_exit();
    }
    if (CHECK(mqt_wait_ready(fds[0])))
        mqt_wait_blocked(pid);
    while (signals < 250) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        kill(pid, SIGUSR1);
        signals++;
        mqt_sleep_ms(20);
    }
    if (signals == 250) {
        CHECK(!"child still blocked after 250 signals");
        unblock(q, op);
        status = mqt_wait_child(pid, 10000);
        CHECK_EQ(status, 0);
    } else {
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CHECK_EQ(mqt_curmsgs(q), full ? 2 : 0);
    close(fds[0]);
    close(fds[1]);
out:
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_eintr_process(void)
{
    eintr_in_process(OP_RECEIVE);
    eintr_in_process(OP_SEND);
    eintr_in_process(OP_TIMEDRECEIVE);
    eintr_in_process(OP_TIMEDSEND);
}

/* After EINTR the descriptor works as before. */
static void test_usable_after_eintr(void)
{
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "after-eintr", O_RDWR, 2, 64);
    struct blocker b;

    if (interrupt_thread(q, OP_RECEIVE, &b)) {
        CHECK_EQ(b.err, EINTR);
        /* The interrupted receive took nothing and left no stale waiter. */
        CHECK_OK(mq_send(q, "after", 5, 1));
        CHECK_EQ(mqt_curmsgs(q), 1);
        CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 5);
        CHECK(memcmp(buf, "after", 5) == 0);
    }
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

int main(void)
{
    mqt_init("fork_eintr");
    install_handler();
    MQT_RUN(test_fork_inherits_descriptor);
    MQT_RUN(test_fork_shares_nonblock);
    MQT_RUN(test_child_close_keeps_parent);
    MQT_RUN(test_receive_woken_by_other_process);
    MQT_RUN(test_parent_receive_woken_by_child);
    MQT_RUN(test_send_woken_by_other_process);
    MQT_RUN(test_many_processes);
    MQT_RUN(test_eintr_thread);
    MQT_RUN(test_eintr_process);
    MQT_RUN(test_usable_after_eintr);
    return mqt_finish();
}
