/*
 * notify.c - mq_notify: SIGEV_SIGNAL (siginfo seen by sigtimedwait and by
 * an SA_SIGINFO handler), one registered process per queue (EBUSY, also
 * for itself), removal by notify(NULL) and by closing the descriptor,
 * one-shot delivery, no delivery when the queue was not empty or when a
 * receiver is blocked, SIGEV_NONE, SIGEV_THREAD, EBADF and EINVAL.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <pthread.h>
#include <semaphore.h>

/* How long to wait for a notification that should come, and for one that
 * should not. */
#define DELIVERY_MS 5000
#define SILENCE_MS 200

static int sig_q; /* SIGRTMIN + 1, blocked and taken with sigtimedwait */

static struct sigevent sev_signal(int signo, int value)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = signo;
    sev.sigev_value.sival_int = value;
    return sev;
}

static void drain_queue(mqd_t q)
{
    char buf[64];
    struct timespec past = mqt_deadline_ms(-1000);
    while (mq_timedreceive(q, buf, sizeof buf, NULL, &past) >= 0)
        ;
}

/* Take a pending sig_q, waiting up to ms.  Returns the signal or -1. */
static int take_signal(siginfo_t *si, long ms)
{
    sigset_t set;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    sigemptyset(&set);
    sigaddset(&set, sig_q);
    memset(si, 0, sizeof *si);
    return sigtimedwait(&set, si, &ts);
}

static void discard_signals(void)
{
    siginfo_t si;
    while (take_signal(&si, 0) > 0)
        ;
}

/* A notification for value, caused by a send from sender, arrives. */
#define EXPECT_NOTIFICATION(value, sender)                                  \
    do {                                                                    \
        siginfo_t si_;                                                      \
        if (CHECK_EQ(take_signal(&si_, DELIVERY_MS), sig_q)) {              \
            CHECK_EQ(si_.si_code, SI_MESGQ);                                \
            CHECK_EQ(si_.si_value.sival_int, (value));                      \
            CHECK_EQ(si_.si_pid, (sender));                                 \
            CHECK_EQ(si_.si_uid, getuid());                                 \
        }                                                                   \
    } while (0)

/* No notification arrives. */
#define EXPECT_SILENCE()                                                    \
    do {                                                                    \
        siginfo_t si_;                                                      \
        CHECK_ERR(take_signal(&si_, SILENCE_MS), EAGAIN);                   \
    } while (0)

/* ---- helpers run in a child process ------------------------------------- */

enum child_result { REGISTERED = 0, GOT_EBUSY = 1, OTHER_ERROR = 2 };

/* In a child: optionally mq_notify(q, NULL) first, then try to register
 * for SIGEV_SIGNAL.  Returns REGISTERED, GOT_EBUSY or OTHER_ERROR (-1 if
 * the child went wrong).  The child's registration ends when it exits. */
static int child_register(mqd_t q, int null_first)
{
    pid_t pid = mqt_fork();
    if (pid == 0) {
        struct sigevent sev = sev_signal(sig_q, 1);
        if (null_first)
            mq_notify(q, NULL);
        if (mq_notify(q, &sev) == 0)
            _exit(REGISTERED);
        _exit(errno == EBUSY ? GOT_EBUSY : OTHER_ERROR);
    }
    return mqt_wait_child(pid, 10000);
}

/* In a child: open the queue by name and send one message.  Returns the
 * child's pid after it has exited successfully, or -1. */
static pid_t child_send(const char *name, const char *msg)
{
    pid_t pid = mqt_fork();
    if (pid == 0) {
        mqd_t w = mq_open(name, O_WRONLY | O_NONBLOCK);
        if (w == (mqd_t)-1 || mq_send(w, msg, strlen(msg), 0) == -1)
            _exit(1);
        _exit(0);
    }
    if (!CHECK_EQ(mqt_wait_child(pid, 10000), 0))
        return -1;
    return pid;
}

/* ---- SIGEV_SIGNAL -------------------------------------------------------- */

/* The signal carries SI_MESGQ, the registered value and the sender's pid
 * and uid; the message stays in the queue. */
static void test_signal_siginfo(void)
{
    static int cookie;
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "siginfo", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 0x5151);
    siginfo_t si;
    pid_t sender;

    discard_signals();
    CHECK_OK(mq_notify(q, &sev));
    sender = child_send(name, "from child");
    EXPECT_NOTIFICATION(0x5151, sender);
    CHECK_EQ(mqt_curmsgs(q), 1);

    /* A pointer value, and the process itself as the sender. */
    drain_queue(q);
    sev.sigev_value.sival_ptr = &cookie;
    CHECK_OK(mq_notify(q, &sev));
    CHECK_OK(mq_send(q, "self", 4, 0));
    if (CHECK_EQ(take_signal(&si, DELIVERY_MS), sig_q)) {
        CHECK_EQ(si.si_code, SI_MESGQ);
        CHECK(si.si_value.sival_ptr == (void *)&cookie);
        CHECK_EQ(si.si_pid, getpid());
    }
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static volatile sig_atomic_t h_count, h_signo, h_code, h_value, h_pid;

static void on_notify(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    h_signo = sig;
    h_code = si->si_code;
    h_value = si->si_value.sival_int;
    h_pid = si->si_pid;
    h_count++;
}

/* An SA_SIGINFO handler sees the same siginfo. */
static void test_signal_handler(void)
{
    char name[MQT_NAME_LEN];
    int signo = SIGRTMIN + 2;
    mqd_t q = mqt_create(name, "handler", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(signo, 4242);
    struct sigaction sa, old;
    pid_t sender;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = on_notify;
    sa.sa_flags = SA_SIGINFO;
    CHECK_OK(sigaction(signo, &sa, &old));
    h_count = 0;

    CHECK_OK(mq_notify(q, &sev));
    sender = child_send(name, "go");
    for (int i = 0; i < DELIVERY_MS && h_count == 0; i++)
        mqt_sleep_ms(1);
    CHECK_EQ(h_count, 1);
    CHECK_EQ(h_signo, signo);
    CHECK_EQ(h_code, SI_MESGQ);
    CHECK_EQ(h_value, 4242);
    CHECK_EQ(h_pid, sender);

    sigaction(signo, &old, NULL);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A process that sends to its own registration finds the signal handled
 * when mq_send returns, as with the kernel, which queues the signal before
 * the call returns (the only thread that can take it is this one). */
static void test_signal_before_own_send_returns(void)
{
    char name[MQT_NAME_LEN];
    int signo = SIGRTMIN + 3;
    mqd_t q = mqt_create(name, "own-send", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(signo, 77);
    struct sigaction sa, old;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = on_notify;
    sa.sa_flags = SA_SIGINFO;
    CHECK_OK(sigaction(signo, &sa, &old));
    for (int round = 0; round < 20; round++) {
        char buf[64];
        h_count = 0;
        CHECK_OK(mq_notify(q, &sev));
        CHECK_OK(mq_send(q, "me", 2, 0));
        /* No wait: the handler ran before mq_send returned. */
        CHECK_EQ(h_count, 1);
        CHECK_EQ(h_value, 77);
        CHECK_EQ(h_pid, getpid());
        CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 2);
    }
    sigaction(signo, &old, NULL);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Another process's send has the registered process's signal queued when
 * it returns, as with the kernel: the registrant, told by a pipe right
 * after the send, finds its handler has run. */
static void test_signal_before_other_send_returns(void)
{
    char name[MQT_NAME_LEN];
    int signo = SIGRTMIN + 3;
    mqd_t q = mqt_create(name, "other-send", O_RDWR | O_NONBLOCK, 4, 64);
    int registered[2], sent[2];
    pid_t pid;

    CHECK_OK(pipe(registered));
    CHECK_OK(pipe(sent));
    pid = mqt_fork();
    if (pid == 0) {
        struct sigevent sev = sev_signal(signo, 99);
        struct sigaction sa;
        char c, buf[64];

        memset(&sa, 0, sizeof sa);
        sigemptyset(&sa.sa_mask);
        sa.sa_sigaction = on_notify;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        CHECK_OK(sigaction(signo, &sa, NULL));
        for (int round = 0; round < 20; round++) {
            h_count = 0;
            CHECK_OK(mq_notify(q, &sev));
            CHECK_EQ(write(registered[1], "r", 1), 1);
            CHECK_EQ(read(sent[0], &c, 1), 1);
            /* No wait: the signal was queued before the send returned. */
            CHECK_EQ(h_count, 1);
            CHECK_EQ(h_value, 99);
            CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
        }
        mqt_child_exit();
    }
    for (int round = 0; round < 20; round++) {
        char c;
        CHECK_EQ(read(registered[0], &c, 1), 1);
        CHECK_OK(mq_send(q, "x", 1, 0));
        CHECK_EQ(write(sent[1], "s", 1), 1);
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    close(registered[0]);
    close(registered[1]);
    close(sent[0]);
    close(sent[1]);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- who may register ---------------------------------------------------- */

/* A registered process cannot register again, through any descriptor of
 * the queue, until it removes its registration. */
static void test_ebusy_same_process(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "ebusy-self", O_RDWR, 4, 64), q2;
    struct sigevent sev = sev_signal(sig_q, 1), none;

    memset(&none, 0, sizeof none);
    none.sigev_notify = SIGEV_NONE;
    CHECK_OK(q2 = mq_open(name, O_RDONLY));
    CHECK_OK(mq_notify(q, &sev));
    CHECK_ERR(mq_notify(q, &sev), EBUSY);
    CHECK_ERR(mq_notify(q, &none), EBUSY);
    CHECK_ERR(mq_notify(q2, &sev), EBUSY);
    CHECK_OK(mq_notify(q, NULL));
    CHECK_OK(mq_notify(q2, &sev));
    CHECK_ERR(mq_notify(q, &sev), EBUSY);
    CHECK_OK(mq_notify(q2, NULL));
    CHECK_OK(mq_close(q2));
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Another process gets EBUSY; its notify(NULL) does not remove our
 * registration, and neither does its exit. */
static void test_ebusy_other_process(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "ebusy-other", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 77);
    pid_t sender;

    discard_signals();
    CHECK_OK(mq_notify(q, &sev));
    CHECK_EQ(child_register(q, 0), GOT_EBUSY);
    CHECK_EQ(child_register(q, 1), GOT_EBUSY);
    CHECK_ERR(mq_notify(q, &sev), EBUSY); /* still ours */
    sender = child_send(name, "m");
    EXPECT_NOTIFICATION(77, sender);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* notify(NULL) removes the registration: no signal, others may register. */
static void test_null_removes(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "null", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 3);

    discard_signals();
    CHECK_OK(mq_notify(q, &sev));
    CHECK_OK(mq_notify(q, NULL));
    CHECK_OK(mq_send(q, "m", 1, 0));
    EXPECT_SILENCE();
    CHECK_EQ(child_register(q, 0), REGISTERED);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Closing the descriptor used to register removes the registration. */
static void test_close_removes(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "close", O_RDWR | O_NONBLOCK, 4, 64), q2;
    struct sigevent sev = sev_signal(sig_q, 5);

    discard_signals();
    CHECK_OK(q2 = mq_open(name, O_RDONLY));
    CHECK_OK(mq_notify(q2, &sev));
    CHECK_EQ(child_register(q, 0), GOT_EBUSY);
    CHECK_OK(mq_close(q2));
    CHECK_EQ(child_register(q, 0), REGISTERED);
    /* The child's registration ended with the child. */
    CHECK_OK(mq_notify(q, &sev));
    CHECK_OK(mq_send(q, "m", 1, 0));
    EXPECT_NOTIFICATION(5, getpid());
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- when a notification is sent ----------------------------------------- */

/* Delivery removes the registration: the next empty-to-non-empty change
 * sends nothing until the process registers again. */
static void test_one_shot(void)
{
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "oneshot", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 11);

    discard_signals();
    CHECK_OK(mq_notify(q, &sev));
    CHECK_OK(mq_send(q, "1", 1, 0));
    EXPECT_NOTIFICATION(11, getpid());
    CHECK_EQ(child_register(q, 0), REGISTERED); /* nobody is registered */

    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_OK(mq_send(q, "2", 1, 0));
    EXPECT_SILENCE();

    drain_queue(q);
    sev.sigev_value.sival_int = 12;
    CHECK_OK(mq_notify(q, &sev));
    CHECK_OK(mq_send(q, "3", 1, 0));
    EXPECT_NOTIFICATION(12, getpid());
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Only a send into an empty queue notifies; the registration waits for
 * one. */
static void test_not_when_nonempty(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "nonempty", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 21);

    discard_signals();
    CHECK_OK(mq_send(q, "a", 1, 0));
    CHECK_OK(mq_notify(q, &sev));
    EXPECT_SILENCE(); /* registering on a non-empty queue sends nothing */
    CHECK_OK(mq_send(q, "b", 1, 9));
    EXPECT_SILENCE();
    CHECK_EQ(child_register(q, 0), GOT_EBUSY); /* still registered */

    drain_queue(q);
    CHECK_EQ(mqt_curmsgs(q), 0);
    EXPECT_SILENCE(); /* emptying sends nothing either */
    CHECK_OK(mq_send(q, "c", 1, 0));
    EXPECT_NOTIFICATION(21, getpid());
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* A message taken by a receiver blocked in mq_receive is not announced,
 * and the registration stays for the next one. */
static void test_not_when_receiver_blocked(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "blocked", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 31);
    int fds[2];
    pid_t pid;

    if (!CHECK_OK(pipe(fds)))
        goto out;
    discard_signals();
    CHECK_OK(mq_notify(q, &sev));
    pid = mqt_fork();
    if (pid == 0) {
        char buf[64];
        mqd_t r;
        CHECK_OK(r = mq_open(name, O_RDONLY));
        mqt_say_ready(fds[1]);
        CHECK_EQ(mq_receive(r, buf, sizeof buf, NULL), 5);
        CHECK(memcmp(buf, "taken", 5) == 0);
        mqt_child_exit();
    }
    if (CHECK(mqt_wait_ready(fds[0]))) {
        mqt_wait_blocked(pid);
        CHECK_OK(mq_send(q, "taken", 5, 0));
    }
    CHECK_EQ(mqt_wait_child(pid, 10000), 0);
    CHECK_EQ(mqt_curmsgs(q), 0);
    EXPECT_SILENCE();

    CHECK_OK(mq_send(q, "next", 4, 0));
    EXPECT_NOTIFICATION(31, getpid());
    close(fds[0]);
    close(fds[1]);
out:
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* SIGEV_NONE registers (others get EBUSY) but sends no signal, even with
 * a signal number filled in. */
static void test_sigev_none(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "none", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev = sev_signal(sig_q, 41);

    sev.sigev_notify = SIGEV_NONE;
    discard_signals();
    CHECK_OK(mq_notify(q, &sev));
    CHECK_EQ(child_register(q, 0), GOT_EBUSY);
    CHECK_OK(mq_send(q, "m", 1, 0));
    EXPECT_SILENCE();
    CHECK_OK(mq_notify(q, NULL));
    CHECK_EQ(child_register(q, 0), REGISTERED);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_ebadf_einval(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "errors", O_RDWR | O_NONBLOCK, 4, 64), q2;
    struct sigevent sev = sev_signal(sig_q, 1), bad;

    CHECK_ERR(mq_notify((mqd_t)-1, &sev), EBADF);
    CHECK_ERR(mq_notify((mqd_t)-1, NULL), EBADF);
    CHECK_OK(q2 = mq_open(name, O_RDONLY));
    CHECK_OK(mq_close(q2));
    CHECK_ERR(mq_notify(q2, &sev), EBADF);

    bad = sev;
    bad.sigev_notify = 12345;
    CHECK_ERR(mq_notify(q, &bad), EINVAL);
    bad = sev;
    bad.sigev_signo = 1000;
    CHECK_ERR(mq_notify(q, &bad), EINVAL);
    bad.sigev_signo = -1;
    CHECK_ERR(mq_notify(q, &bad), EINVAL);
    /* The failed calls registered nothing. */
    CHECK_EQ(child_register(q, 0), REGISTERED);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- SIGEV_THREAD -------------------------------------------------------- */

static sem_t thread_ran;
static int thread_calls;
static int thread_value;
static pthread_t main_thread;
static int thread_was_main;

static void notify_function(union sigval v)
{
    thread_value = v.sival_int;
    thread_was_main = pthread_equal(pthread_self(), main_thread);
    __atomic_add_fetch(&thread_calls, 1, __ATOMIC_SEQ_CST);
    sem_post(&thread_ran);
}

/* The function runs once, in another thread, with the value; the next
 * message needs a new registration. */
static void test_sigev_thread(void)
{
    char name[MQT_NAME_LEN], buf[64];
    mqd_t q = mqt_create(name, "thread", O_RDWR | O_NONBLOCK, 4, 64);
    struct sigevent sev;
    struct timespec deadline;

    main_thread = pthread_self();
    if (!CHECK_OK(sem_init(&thread_ran, 0, 0)))
        goto out;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = notify_function;
    sev.sigev_notify_attributes = NULL;
    sev.sigev_value.sival_int = 77;

    CHECK_OK(mq_notify(q, &sev));
    CHECK_ERR(mq_notify(q, &sev), EBUSY);
    CHECK_EQ(child_register(q, 0), GOT_EBUSY);
    CHECK(child_send(name, "wake") > 0);
    deadline = mqt_deadline_ms(DELIVERY_MS);
    CHECK_OK(sem_timedwait(&thread_ran, &deadline));
    CHECK_EQ(__atomic_load_n(&thread_calls, __ATOMIC_SEQ_CST), 1);
    CHECK_EQ(thread_value, 77);
    CHECK(!thread_was_main);
    CHECK_EQ(mqt_curmsgs(q), 1);

    /* One-shot: a second empty-to-non-empty change runs nothing. */
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 4);
    CHECK_OK(mq_send(q, "again", 5, 0));
    deadline = mqt_deadline_ms(SILENCE_MS);
    CHECK_ERR(sem_timedwait(&thread_ran, &deadline), ETIMEDOUT);
    CHECK_EQ(__atomic_load_n(&thread_calls, __ATOMIC_SEQ_CST), 1);

    /* Registering again works and fires again. */
    drain_queue(q);
    sev.sigev_value.sival_int = 78;
    CHECK_OK(mq_notify(q, &sev));
    CHECK_OK(mq_send(q, "third", 5, 0));
    deadline = mqt_deadline_ms(DELIVERY_MS);
    CHECK_OK(sem_timedwait(&thread_ran, &deadline));
    CHECK_EQ(__atomic_load_n(&thread_calls, __ATOMIC_SEQ_CST), 2);
    CHECK_EQ(thread_value, 78);
    sem_destroy(&thread_ran);
out:
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

int main(void)
{
    sigset_t set;

    mqt_init("notify");
    /* Block sig_q before any thread exists, so it stays pending for
     * sigtimedwait. */
    sig_q = SIGRTMIN + 1;
    sigemptyset(&set);
    sigaddset(&set, sig_q);
    sigprocmask(SIG_BLOCK, &set, NULL);

    MQT_RUN(test_signal_siginfo);
    MQT_RUN(test_signal_handler);
    MQT_RUN(test_signal_before_own_send_returns);
    MQT_RUN(test_signal_before_other_send_returns);
    MQT_RUN(test_ebusy_same_process);
    MQT_RUN(test_ebusy_other_process);
    MQT_RUN(test_null_removes);
    MQT_RUN(test_close_removes);
    MQT_RUN(test_one_shot);
    MQT_RUN(test_not_when_nonempty);
    MQT_RUN(test_not_when_receiver_blocked);
    MQT_RUN(test_sigev_none);
    MQT_RUN(test_ebadf_einval);
    MQT_RUN(test_sigev_thread); /* last: it starts helper threads */
    return mqt_finish();
}
