/* The descriptor table's hard cases, each over many iterations:
 *
 * 1. closes racing with calls on other threads: two threads open and close
 *    queues (16-byte and 32-byte messages) as fast as they can, two others
 *    call on whatever descriptor numbers were last published. Every call
 *    must succeed or fail with EBADF (or EAGAIN when a queue is empty),
 *    never crash, and see only a queue of one of the two shapes. A close
 *    while a call blocks leaves the call going, and the file descriptor
 *    closes when it returns.
 * 2. lookups from a signal handler while its thread opens and closes: a
 *    thread opens and closes queues in a loop while another thread sends
 *    it signals whose handler sends to and receives from a queue. A table
 *    whose lookup waits for its writers deadlocks here (the watchdog
 *    ends the test).
 * 3. fork while a thread is mid-open or mid-close: every child must be
 *    able to open, use and close queues (a lock inherited held would hang
 *    it), and the parent's descriptors keep working.
 * 4. duplicates: a dup() of a descriptor is adopted as one of the same
 *    queue; an unrelated file descriptor gives EBADF.
 *
 * Built against shmq only, calling the shmq_* names directly. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "shmq.h"

static int passed, failed;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            printf("FAIL %s:%d: %s (errno %d: %s)\n", __FILE__, __LINE__,    \
                   #cond, errno, strerror(errno));                           \
        }                                                                    \
    } while (0)

static char names[4][64];
static atomic_int stop;
static atomic_int published[2] = {-1, -1};
static atomic_long bad, calls;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void note_bad(const char *what, long v, int e)
{
    if (atomic_fetch_add(&bad, 1) < 5)
        printf("unexpected %s: %ld (errno %d: %s)\n", what, v, e, strerror(e));
}

/* Case 1: open, use and close queue `which` in a loop, publishing the
 * descriptor while it is open. */
static void *opener(void *arg)
{
    int which = (int)(long)arg;
    long iterations = 0;
    while (!atomic_load(&stop)) {
        mqd_t q = shmq_open(names[which], O_RDWR | O_NONBLOCK);
        if (q < 0) {
            note_bad("open", q, errno);
            continue;
        }
        atomic_store(&published[which], q);
        char buf[64] = {0};
        if (shmq_send(q, buf, 8, 1) != 0 && errno != EAGAIN)
            note_bad("own send", -1, errno);
        unsigned prio;
        ssize_t n = shmq_receive(q, buf, sizeof buf, &prio);
        if (n < 0 && errno != EAGAIN)
            note_bad("own receive", n, errno);
        atomic_store(&published[which], -1);
        if (shmq_close(q) != 0)
            note_bad("close", -1, errno);
        iterations++;
    }
    return (void *)iterations;
}

static void *caller(void *arg)
{
    (void)arg;
    unsigned seed = 1;
    while (!atomic_load(&stop)) {
        seed = seed * 1103515245 + 12345;
        mqd_t q = atomic_load(&published[(seed >> 16) & 1]);
        if (q < 0)
            continue;
        char buf[64] = {0};
        unsigned prio;
        struct mq_attr a;
        int r = shmq_send(q, buf, 8, 2);
        if (r != 0 && errno != EBADF && errno != EAGAIN)
            note_bad("send", r, errno);
        ssize_t n = shmq_receive(q, buf, sizeof buf, &prio);
        if (n < 0 && errno != EBADF && errno != EAGAIN)
            note_bad("receive", n, errno);
        if (n >= 0 && n != 8)
            note_bad("received length", n, 0);
        r = shmq_getattr(q, &a);
        if (r != 0 && errno != EBADF)
            note_bad("getattr", r, errno);
        if (r == 0 && a.mq_msgsize != 16 && a.mq_msgsize != 32)
            note_bad("msgsize of another queue", a.mq_msgsize, 0);
        atomic_fetch_add(&calls, 1);
    }
    return NULL;
}

static void *blocked_receiver(void *arg)
{
    char buf[64];
    unsigned prio;
    return (void *)(long)shmq_receive((mqd_t)(long)arg, buf, sizeof buf, &prio);
}

static void run_for(double seconds)
{
    double end = now() + seconds;
    while (now() < end)
        usleep(10000);
}

/* Case 2. */
static mqd_t handler_q;
static atomic_long handled, handler_bad;

static void handler(int sig)
{
    (void)sig;
    int saved = errno;
    char buf[64] = "signal";
    unsigned prio;
    if (shmq_send(handler_q, buf, 6, 3) != 0 ||
        shmq_receive(handler_q, buf, sizeof buf, &prio) != 6 || prio != 3)
        atomic_fetch_add(&handler_bad, 1);
    atomic_fetch_add(&handled, 1);
    errno = saved;
}

static void *open_close_loop(void *arg)
{
    (void)arg;
    long iterations = 0;
    /* First use of the handler's queue from this thread, outside a handler. */
    char buf[64];
    unsigned prio;
    shmq_send(handler_q, "x", 1, 0);
    shmq_receive(handler_q, buf, sizeof buf, &prio);
    while (!atomic_load(&stop)) {
        mqd_t q = shmq_open(names[0], O_RDWR | O_NONBLOCK);
        mqd_t r = shmq_open(names[1], O_RDONLY);
        if (q < 0 || r < 0)
            note_bad("open in signal storm", -1, errno);
        if (q >= 0)
            shmq_close(q);
        if (r >= 0)
            shmq_close(r);
        iterations++;
    }
    return (void *)iterations;
}

/* Case 3: the table's writers (opens, closes, adoptions of duplicates)
 * as often as possible. */
static void *writer_loop(void *arg)
{
    (void)arg;
    long iterations = 0;
    while (!atomic_load(&stop)) {
        mqd_t q = shmq_open(names[0], O_RDWR | O_NONBLOCK);
        if (q < 0) {
            note_bad("open in fork storm", -1, errno);
            continue;
        }
        struct mq_attr a;
        for (int i = 0; i < 20; i++) {
            int d = dup(q);
            if (shmq_getattr(d, &a) != 0 || shmq_close(d) != 0)
                note_bad("adopt in fork storm", d, errno);
        }
        shmq_close(q);
        iterations++;
    }
    return (void *)iterations;
}

/* waitpid with a deadline: a child that hangs (it may have blocked its
 * signals, so its own alarm cannot end it) is killed and counts as failed. */
static int wait_child(pid_t pid, double seconds)
{
    double end = now() + seconds;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        if (now() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(1000);
    }
}

static int child_work(void)
{
    alarm(20);
    mqd_t q = shmq_open(names[0], O_RDWR | O_NONBLOCK);
    if (q < 0)
        return 2;
    char buf[64] = "child";
    unsigned prio;
    int ok = shmq_send(q, buf, 5, 4) == 0;
    ok = ok && shmq_receive(q, buf, sizeof buf, &prio) >= 0;
    ok = ok && shmq_close(q) == 0;
    /* The descriptor inherited from the parent works in the child. */
    ok = ok && shmq_send(handler_q, buf, 5, 5) == 0 &&
         shmq_receive(handler_q, buf, sizeof buf, &prio) == 5 && prio == 5;
    return ok ? 0 : 3;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(240); /* watchdog: a deadlock ends the test as a failure */
    for (int i = 0; i < 4; i++)
        snprintf(names[i], sizeof names[i], "/shmq-races-%d-%d", (int)getpid(), i);
    struct mq_attr attr = {0};
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 16;
    mqd_t keep0 = shmq_open(names[0], O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    attr.mq_msgsize = 32;
    mqd_t keep1 = shmq_open(names[1], O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    attr.mq_msgsize = 64;
    handler_q = shmq_open(names[2], O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, &attr);
    CHECK(keep0 >= 0 && keep1 >= 0 && handler_q >= 0);
    shmq_close(keep0);
    shmq_close(keep1);
    int fds_before = count_fds();

    /* 1. Closes racing with calls. */
    pthread_t t[4];
    for (long i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, opener, (void *)i);
    for (int i = 2; i < 4; i++)
        pthread_create(&t[i], NULL, caller, NULL);
    run_for(3.0);
    atomic_store(&stop, 1);
    long opened = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        if (i < 2)
            opened += (long)r;
    }
    printf("races: %ld opens and closes, %ld racing calls\n", opened, atomic_load(&calls));
    CHECK(opened > 1000 && atomic_load(&calls) > 1000);
    CHECK(atomic_load(&bad) == 0);
    /* (No count of file descriptors here: a call on a number that a
     * close has just freed may meet it reused by any descriptor, one of
     * the library's own included, as with any stale file descriptor.) */

    /* 1b. A close while a call blocks on the descriptor: the call goes on
     * and the file descriptor closes when it returns. */
    fds_before = count_fds();
    mqd_t blocked_q = shmq_open(names[3], O_CREAT | O_EXCL | O_RDONLY, 0600, &attr);
    mqd_t sender_q = shmq_open(names[3], O_WRONLY);
    CHECK(blocked_q >= 0 && sender_q >= 0);
    pthread_t rt;
    pthread_create(&rt, NULL, blocked_receiver, (void *)(long)blocked_q);
    usleep(100000);
    CHECK(shmq_close(blocked_q) == 0);
    CHECK(fcntl(blocked_q, F_GETFD) != -1); /* still in use by the call */
    errno = 0;
    CHECK(shmq_getattr(blocked_q, &attr) == -1 && errno == EBADF);
    CHECK(shmq_send(sender_q, "late", 4, 7) == 0);
    void *got;
    pthread_join(rt, &got);
    CHECK((long)got == 4);
    CHECK(fcntl(blocked_q, F_GETFD) == -1 && errno == EBADF);
    CHECK(shmq_close(sender_q) == 0);
    CHECK(count_fds() == fds_before);

    /* 2. Lookups from a signal handler while the thread opens and closes. */
    atomic_store(&stop, 0);
    struct sigaction sa = {0};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t w;
    pthread_create(&w, NULL, open_close_loop, NULL);
    double end = now() + 3.0;
    while (now() < end) {
        pthread_kill(w, SIGUSR1);
        usleep(50);
    }
    atomic_store(&stop, 1);
    void *r;
    pthread_join(w, &r);
    printf("signals: %ld handled during %ld opens and closes\n", atomic_load(&handled), (long)r);
    CHECK(atomic_load(&handled) > 100 && (long)r > 100);
    CHECK(atomic_load(&handler_bad) == 0);
    CHECK(atomic_load(&bad) == 0);

    /* 3. Fork while a thread is mid-open or mid-close. */
    atomic_store(&stop, 0);
    pthread_create(&w, NULL, writer_loop, NULL);
    int children = 0, good = 0;
    end = now() + 3.0;
    while (now() < end && children < 300) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(child_work());
        children++;
        int status = pid > 0 ? wait_child(pid, 10.0) : -1;
        if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
            good++;
        else if (children - good <= 3)
            printf("child %d: %s %#x\n", children, status == -1 ? "hung" : "status", status);
        if (children - good >= 3)
            break; /* enough to tell */
    }
    atomic_store(&stop, 1);
    pthread_join(w, &r);
    printf("fork: %d of %d children worked\n", good, children);
    CHECK(children > 10 && good == children);

    /* 4. Duplicates. */
    errno = 0;
    CHECK(shmq_send(0, "x", 1, 0) == -1 && errno == EBADF);
    int dup_fd = dup(handler_q);
    char buf[64];
    unsigned prio = 0;
    CHECK(shmq_send(dup_fd, "dup", 3, 6) == 0);
    CHECK(shmq_receive(handler_q, buf, sizeof buf, &prio) == 3 && prio == 6);
    CHECK(shmq_close(dup_fd) == 0);
    CHECK(fcntl(dup_fd, F_GETFD) == -1 && errno == EBADF);
    CHECK(shmq_send(handler_q, "still", 5, 0) == 0);
    CHECK(shmq_receive(handler_q, buf, sizeof buf, &prio) == 5);

    CHECK(shmq_close(handler_q) == 0);
    for (int i = 0; i < 4; i++)
        CHECK(shmq_unlink(names[i]) == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
