/*
 * mqtest.h - a tiny harness shared by the POSIX message queue tests.
 *
 * Each test program is one translation unit that includes, in this order:
 *
 *     #include <mqueue.h>
 *     #ifdef SHMQ_COMPAT
 *     #include "shmq_compat.h"
 *     #endif
 *     #include "mqtest.h"
 *
 * so that every mq_* call below, including the ones in this header, goes
 * to whichever implementation the build selected.
 *
 * Checks never abort: a failed check prints "FAIL file:line: ..." with the
 * errno name and the program goes on.  mqt_finish() prints the summary line
 * "N passed, N failed" and returns the exit status (0 only if none failed).
 *
 * Queue names come from mqt_name(): they contain the pid and are unlinked
 * at exit, on a fatal signal and when the watchdog fires.
 */
#ifndef MQTEST_H
#define MQTEST_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Seconds before a hung test program gives up (see mqt_init). */
#ifndef MQT_WATCHDOG_SECONDS
#define MQT_WATCHDOG_SECONDS 90
#endif

#define MQT_MAX_NAMES 128
#define MQT_NAME_LEN 300

/* MQ_PRIO_MAX on Linux: priorities run from 0 to MQT_PRIO_LIMIT - 1. */
#define MQT_PRIO_LIMIT 32768u

static int mqt_passed;
static int mqt_failed;
static int mqt_failed_at_fork;
static pid_t mqt_pid;
static int mqt_nnames;
static int mqt_seq;
static char mqt_names[MQT_MAX_NAMES][MQT_NAME_LEN];

static inline const char *mqt_errname(int e)
{
    static _Thread_local char other[32];
    switch (e) {
#define MQT_E_(x) case x: return #x;
    case 0: return "0";
    MQT_E_(EPERM) MQT_E_(ENOENT) MQT_E_(ESRCH) MQT_E_(EINTR) MQT_E_(EIO)
    MQT_E_(ENXIO) MQT_E_(E2BIG) MQT_E_(EBADF) MQT_E_(ECHILD) MQT_E_(EAGAIN)
    MQT_E_(ENOMEM) MQT_E_(EACCES) MQT_E_(EFAULT) MQT_E_(EBUSY)
    MQT_E_(EEXIST) MQT_E_(ENODEV) MQT_E_(ENOTDIR) MQT_E_(EISDIR)
    MQT_E_(EINVAL) MQT_E_(ENFILE) MQT_E_(EMFILE) MQT_E_(ENOSPC)
    MQT_E_(ESPIPE) MQT_E_(EROFS) MQT_E_(EPIPE) MQT_E_(ERANGE)
    MQT_E_(ENAMETOOLONG) MQT_E_(ENOSYS) MQT_E_(EMSGSIZE) MQT_E_(ENOTSUP)
    MQT_E_(ETIMEDOUT) MQT_E_(EOVERFLOW) MQT_E_(ELOOP) MQT_E_(EOWNERDEAD)
    MQT_E_(ENOTRECOVERABLE)
#undef MQT_E_
    default:
        snprintf(other, sizeof other, "errno %d", e);
        return other;
    }
}

/* The check functions take &errno and read it only once every argument,
 * including the checked call, has been evaluated. */

static inline int mqt_report_(int ok, const int *err, const char *file,
                              int line, const char *what)
{
    if (ok) {
        __atomic_add_fetch(&mqt_passed, 1, __ATOMIC_RELAXED);
        return 1;
    }
    __atomic_add_fetch(&mqt_failed, 1, __ATOMIC_RELAXED);
    printf("FAIL %s:%d: %s (errno %s)\n", file, line, what,
           mqt_errname(*err));
    fflush(stdout);
    return 0;
}

static inline int mqt_check_eq_(long long a, long long b, const int *err,
                                const char *file, int line,
                                const char *sa, const char *sb)
{
    char what[512];
    if (a == b)
        return mqt_report_(1, err, file, line, "");
    snprintf(what, sizeof what, "%s == %s: got %lld, expected %lld",
             sa, sb, a, b);
    return mqt_report_(0, err, file, line, what);
}

static inline int mqt_check_err_(long long r, const int *err, int want,
                                 const char *file, int line, const char *expr)
{
    char what[512];
    int e = *err;
    if (r == -1 && e == want)
        return mqt_report_(1, err, file, line, "");
    if (r == -1)
        snprintf(what, sizeof what, "%s: failed with %s, expected %s",
                 expr, mqt_errname(e), mqt_errname(want));
    else
        snprintf(what, sizeof what, "%s: returned %lld, expected -1/%s",
                 expr, r, mqt_errname(want));
    return mqt_report_(0, &e, file, line, what);
}

static inline int mqt_check_ok_(long long r, const int *err, const char *file,
                                int line, const char *expr)
{
    char what[512];
    int e = *err;
    if (r != -1)
        return mqt_report_(1, err, file, line, "");
    snprintf(what, sizeof what, "%s: failed", expr);
    return mqt_report_(0, &e, file, line, what);
}

/* All four evaluate to 1 if the check passed, 0 if it failed.  Each
 * evaluates its operands once.  Do not combine two checks in one
 * expression with an operator that does not sequence them (use && or
 * separate statements), or the errno shown may be the other call's. */

/* CHECK(cond): cond is true. */
#define CHECK(cond)                                                         \
    mqt_report_(!!(cond), &errno, __FILE__, __LINE__, "CHECK(" #cond ")")

/* CHECK_EQ(a, b): two integer values are equal (a is the actual value). */
#define CHECK_EQ(a, b)                                                      \
    mqt_check_eq_((long long)(a), (long long)(b), &errno, __FILE__,         \
                  __LINE__, #a, #b)

/* CHECK_OK(expr): expr (a call returning -1 on error) did not return -1.
 * expr may contain an assignment: CHECK_OK(q = mq_open(...)). */
#define CHECK_OK(expr)                                                      \
    (errno = 0,                                                             \
     mqt_check_ok_((long long)(expr), &errno, __FILE__, __LINE__, #expr))

/* CHECK_ERR(expr, E): expr returned -1 and set errno to E. */
#define CHECK_ERR(expr, want)                                               \
    (errno = 0, mqt_check_err_((long long)(expr), &errno, (want), __FILE__, \
                               __LINE__, #expr))

/* Print a loud line for a part of a test that cannot run here. */
#define SKIP(...)                                                           \
    do {                                                                    \
        printf("SKIP %s:%d: ", __FILE__, __LINE__);                         \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
        fflush(stdout);                                                     \
    } while (0)

/* ---- queue names ------------------------------------------------------ */

static inline void mqt_forget_name(const char *name)
{
    for (int i = 0; i < mqt_nnames; i++) {
        if (strcmp(mqt_names[i], name) == 0) {
            mqt_nnames--;
            memmove(mqt_names[i], mqt_names[mqt_nnames], MQT_NAME_LEN);
            return;
        }
    }
}

/* Remember a name so that it is unlinked when the program ends. */
static inline void mqt_track_name(const char *name)
{
    if (mqt_nnames == MQT_MAX_NAMES || strlen(name) >= MQT_NAME_LEN) {
        printf("mqtest: cannot track queue name %s\n", name);
        abort();
    }
    strcpy(mqt_names[mqt_nnames++], name);
}

/* Write a fresh queue name "/mqtest-<pid>-<seq>-<tag>" into buf (at least
 * MQT_NAME_LEN bytes) and track it for cleanup. */
static inline char *mqt_name(char *buf, const char *tag)
{
    snprintf(buf, MQT_NAME_LEN, "/mqtest-%ld-%d-%s", (long)getpid(),
             ++mqt_seq, tag);
    mqt_track_name(buf);
    return buf;
}

/* Unlink a tracked name now and stop tracking it.  Best effort: the name
 * may be gone already or may never have been created. */
static inline void mqt_unlink(const char *name)
{
    int saved = errno;
    mq_unlink(name);
    mqt_forget_name(name);
    errno = saved;
}

static void mqt_unlink_all(void)
{
    if (getpid() != mqt_pid)
        return; /* a forked child must not remove the parent's queues */
    for (int i = 0; i < mqt_nnames; i++)
        mq_unlink(mqt_names[i]);
    mqt_nnames = 0;
}

/* Create a new queue (O_CREAT|O_EXCL|extra_flags, mode 0600) with the
 * given size under a fresh tracked name.  Returns (mqd_t)-1 on failure,
 * after recording a failed check. */
static inline mqd_t mqt_create(char *name, const char *tag, int extra_flags,
                               long maxmsg, long msgsize)
{
    struct mq_attr attr;
    char what[MQT_NAME_LEN + 32];
    mqd_t q;
    memset(&attr, 0, sizeof attr);
    attr.mq_maxmsg = maxmsg;
    attr.mq_msgsize = msgsize;
    mqt_name(name, tag);
    q = mq_open(name, O_CREAT | O_EXCL | extra_flags, 0600, &attr);
    if (q == (mqd_t)-1) {
        int e = errno;
        snprintf(what, sizeof what, "mq_open(%s, O_CREAT|O_EXCL)", name);
        mqt_check_ok_(-1, &e, __FILE__, __LINE__, what);
    }
    return q;
}

/* The queue's mq_curmsgs, or -1 (after a failed check) if getattr fails. */
static inline long mqt_curmsgs(mqd_t q)
{
    struct mq_attr a;
    if (!CHECK_OK(mq_getattr(q, &a)))
        return -1;
    return a.mq_curmsgs;
}

/* ---- time --------------------------------------------------------------- */

static inline struct timespec mqt_now(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return ts;
}

static inline struct timespec mqt_ts_add_ms(struct timespec ts, long ms)
{
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    while (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (ts.tv_nsec < 0) {
        ts.tv_sec--;
        ts.tv_nsec += 1000000000L;
    }
    return ts;
}

/* A CLOCK_REALTIME deadline ms milliseconds from now (negative: past). */
static inline struct timespec mqt_deadline_ms(long ms)
{
    return mqt_ts_add_ms(mqt_now(CLOCK_REALTIME), ms);
}

/* a - b in milliseconds. */
static inline long long mqt_ts_diff_ms(struct timespec a, struct timespec b)
{
    return (long long)(a.tv_sec - b.tv_sec) * 1000 +
           (a.tv_nsec - b.tv_nsec) / 1000000;
}

static inline void mqt_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* The largest time_t, for "infinite" deadlines. */
#define MQT_TIME_T_MAX                                                      \
    ((time_t)((((uintmax_t)1) << (sizeof(time_t) * CHAR_BIT - 1)) - 1))

/* ---- processes and threads ---------------------------------------------- */

static inline pid_t mqt_gettid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* fork() for tests: the child dies with the parent, and its checks are
 * reported by mqt_child_exit() through the exit status.  Call it from the
 * main thread only (PR_SET_PDEATHSIG follows the forking thread). */
static inline pid_t mqt_fork(void)
{
    pid_t parent = getpid();
    pid_t pid;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
        mqt_failed_at_fork = mqt_failed;
    } else if (pid == -1) {
        int e = errno;
        mqt_check_ok_(-1, &e, __FILE__, __LINE__, "fork()");
    }
    return pid;
}

/* End a child made by mqt_fork(): status 0 if all its checks passed. */
static inline void mqt_child_exit(void)
{
    fflush(stdout);
    _exit(mqt_failed != mqt_failed_at_fork ? 1 : 0);
}

/* Wait for a child for at most timeout_ms.  Returns its exit status,
 * 128 + signal if it was killed by a signal, or -1 on timeout (the child
 * is then killed and reaped). */
static inline int mqt_wait_child(pid_t pid, long timeout_ms)
{
    struct timespec start = mqt_now(CLOCK_MONOTONIC);
    int status;
    if (pid <= 0)
        return -1;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r == -1 && errno != EINTR) {
            printf("mqtest: waitpid(%ld): %s\n", (long)pid,
                   mqt_errname(errno));
            return -1;
        }
        if (mqt_ts_diff_ms(mqt_now(CLOCK_MONOTONIC), start) > timeout_ms) {
            printf("mqtest: child %ld still running after %ld ms, killing it\n",
                   (long)pid, timeout_ms);
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
                ;
            return -1;
        }
        mqt_sleep_ms(2);
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* Wait (at most about 2 s) until thread or process `tid` is asleep in the
 * kernel, then a little longer.  Used before waking a peer that is about
 * to block in mq_receive/mq_send, so the test exercises the blocked path.
 * It only makes a race less likely: no check depends on it.  Without a
 * readable /proc it just sleeps. */
static inline void mqt_wait_blocked(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)tid);
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(path, "r");
        size_t n;
        char *p;
        if (!f) {
            mqt_sleep_ms(200);
            return;
        }
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        p = strrchr(buf, ')');
        if (p && p[1] == ' ' && (p[2] == 'S' || p[2] == 'D')) {
            mqt_sleep_ms(20);
            return;
        }
        mqt_sleep_ms(2);
    }
    mqt_sleep_ms(200);
}

/* Wait for the thread that stores its tid into *tid to block. */
static inline void mqt_wait_thread_blocked(volatile pid_t *tid)
{
    while (__atomic_load_n(tid, __ATOMIC_SEQ_CST) == 0)
        mqt_sleep_ms(1);
    mqt_wait_blocked(*tid);
}

/* A pipe handshake: a child says it is about to block, the parent waits
 * (at most 10 s) for that before mqt_wait_blocked(). */
static inline void mqt_say_ready(int fd)
{
    char c = 'r';
    if (write(fd, &c, 1) != 1)
        _exit(98);
}

static inline int mqt_wait_ready(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };
    char c;
    return poll(&p, 1, 10000) == 1 && read(fd, &c, 1) == 1;
}

/* ---- program frame ------------------------------------------------------ */

static void mqt_fatal_signal(int sig)
{
    static const char msg[] = "mqtest: fatal signal, removing queues\n";
    ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)r;
    mqt_unlink_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void mqt_watchdog(int sig)
{
    static const char msg[] = "FAIL watchdog: test program timed out\n";
    ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)r;
    (void)sig;
    mqt_unlink_all();
    _exit(3);
}

/* Start a test program: line-buffered output, cleanup on exit and on
 * fatal signals, and a SIGALRM watchdog (tests must not use alarm()). */
static inline void mqt_init(const char *prog)
{
    static const int fatal[] = { SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGABRT,
                                 SIGBUS, SIGFPE, SIGSEGV, SIGPIPE, SIGTERM };
    struct sigaction sa;
    setvbuf(stdout, NULL, _IOLBF, 0);
    mqt_pid = getpid();
    atexit(mqt_unlink_all);
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = mqt_fatal_signal;
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
        sigaction(fatal[i], &sa, NULL);
    sa.sa_handler = mqt_watchdog;
    sigaction(SIGALRM, &sa, NULL);
    alarm(MQT_WATCHDOG_SECONDS);
    printf("# %s (pid %ld)\n", prog, (long)mqt_pid);
}

/* Run one test function and say how it went. */
#define MQT_RUN(fn)                                                         \
    do {                                                                    \
        int mqt_before_ = mqt_failed;                                       \
        printf("== %s\n", #fn);                                             \
        fn();                                                               \
        if (mqt_failed == mqt_before_)                                      \
            printf("ok %s\n", #fn);                                         \
        else                                                                \
            printf("not ok %s (%d failed)\n", #fn, mqt_failed - mqt_before_); \
    } while (0)

/* Print the summary line and return the exit status for main(). */
static inline int mqt_finish(void)
{
    mqt_unlink_all();
    printf("%d passed, %d failed\n", mqt_passed, mqt_failed);
    fflush(stdout);
    return mqt_failed == 0 && mqt_passed > 0 ? 0 : 1;
}

#endif /* MQTEST_H */
