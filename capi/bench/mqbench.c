/* mqbench: one C program measuring POSIX message queues through plain
 * mq_* calls, so that the same code runs against the kernel's queues, against
 * libshmq's shmq_* (-a shmq), under the drop-in (LD_PRELOAD=
 * libshmq_preload.so, -a kernel) and, when built with -DWITH_BOOST, against
 * Boost.Interprocess's message_queue (-a boost). SPDX-License-Identifier: MIT
 *
 *   mqbench [-a kernel|shmq|boost] [-p none|before|after] [-c A,B]
 *           [-P producers] [-d depth] [-l len] [-n name] [-x]
 *           pair|pingpong|stream ITERS
 *
 * pair:     send + receive in one process; ns per pair.
 * pingpong: a "ping" process (CPU A) sends, an "echo" process (CPU B) sends
 *           it back; median and 99th percentile of the round trip, in ns.
 * stream:   P producer processes (CPU B) send ITERS messages in all to one
 *           consumer (CPU A); messages per second.
 *
 * Every process of a case is a child, forked before any queue is opened;
 * -p before pins it (sched_setaffinity) before it opens its queues, as
 * under taskset; -p after pins it after; -p none leaves it where it is.
 * The children start together once all have opened their queues. -x: the
 * queues exist already (made by the caller, who also removes them).
 *
 * A run that takes over two minutes is killed (SIGALRM): a peer that died
 * must not leave the others waiting for ever.
 *
 * Output, one line: VALUE P99 CSW_PER_MSG ELAPSED_NS
 * (P99 is 0 where there is none; CSW_PER_MSG counts voluntary and
 * involuntary context switches of all children during the timed part,
 * getrusage, over the messages sent; ELAPSED_NS is the timed part).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmq.h"

typedef struct {
    mqd_t (*open)(const char *, int, ...);
    int (*send)(mqd_t, const char *, size_t, unsigned);
    ssize_t (*receive)(mqd_t, char *, size_t, unsigned *);
    int (*close)(mqd_t);
    int (*unlink)(const char *);
} api_t;

#ifdef WITH_BOOST
mqd_t boostmq_open(const char *name, int oflag, ...);
int boostmq_send(mqd_t q, const char *msg, size_t len, unsigned prio);
ssize_t boostmq_receive(mqd_t q, char *buf, size_t len, unsigned *prio);
int boostmq_close(mqd_t q);
int boostmq_unlink(const char *name);
#endif

enum place { NONE, BEFORE, AFTER };

static api_t api;
static enum place place = NONE;
static int cpu_a = 0, cpu_b = 1;
static int producers = 1;
static long depth = 10, len = 64;
static char name[200];
static int exists;

static void die(const char *what) {
    fprintf(stderr, "mqbench: %s: %s\n", what, strerror(errno));
    _exit(2);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long csw_now(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_nvcsw + r.ru_nivcsw;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        die("sched_setaffinity");
}

static mqd_t open_q(const char *suffix) {
    char n[256];
    struct mq_attr a;
    memset(&a, 0, sizeof a);
    a.mq_maxmsg = depth;
    a.mq_msgsize = len;
    snprintf(n, sizeof n, "%s%s", name, suffix);
    mqd_t q = api.open(n, O_CREAT | O_RDWR, 0600, &a);
    if (q == (mqd_t)-1)
        die(n);
    return q;
}

static void unlink_q(const char *suffix) {
    char n[256];
    snprintf(n, sizeof n, "%s%s", name, suffix);
    api.unlink(n);
}

static void send_or_die(mqd_t q, const char *m, size_t n) {
    while (api.send(q, m, n, 1) != 0)
        if (errno != EINTR)
            die("mq_send");
}

static size_t recv_or_die(mqd_t q, char *b) {
    for (;;) {
        ssize_t r = api.receive(q, b, (size_t)len, NULL);
        if (r >= 0)
            return (size_t)r;
        if (errno != EINTR)
            die("mq_receive");
    }
}

/* What a child reports through the result pipe (one write, < PIPE_BUF). */
struct result {
    double value, p99;
    long csw;
    long long elapsed;
};

static int ready_pipe[2], go_pipe[2], result_pipe[2];

/* Opens the queues where -p says, tells the parent, waits for the start. */
static void setup(int cpu, mqd_t *q1, const char *s1, mqd_t *q2, const char *s2) {
    if (place == BEFORE)
        pin(cpu);
    *q1 = open_q(s1);
    if (q2)
        *q2 = open_q(s2);
    if (place == AFTER)
        pin(cpu);
    char c = 'r';
    if (write(ready_pipe[1], &c, 1) != 1 || read(go_pipe[0], &c, 1) != 1)
        die("start");
}

static void report(struct result r) {
    if (write(result_pipe[1], &r, sizeof r) != (ssize_t)sizeof r)
        die("result");
    _exit(0);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void ping(long iters) {
    mqd_t p, q;
    char *msg = calloc(1, (size_t)len), *buf = malloc((size_t)len);
    double *rtt = malloc(sizeof(double) * (size_t)iters);
    if (!msg || !buf || !rtt)
        die("malloc");
    memset(msg, 0x5a, (size_t)len);
    setup(cpu_a, &p, "-ping", &q, "-pong");
    long c0 = csw_now();
    long long t0 = now_ns(), last = t0;
    for (long i = 0; i < iters; i++) {
        send_or_die(p, msg, (size_t)len);
        if (recv_or_die(q, buf) != (size_t)len)
            die("wrong length");
        long long t = now_ns();
        rtt[i] = (double)(t - last);
        last = t;
    }
    struct result r = {0, 0, csw_now() - c0, now_ns() - t0};
    qsort(rtt, (size_t)iters, sizeof(double), cmp);
    r.value = iters % 2 ? rtt[iters / 2] : (rtt[iters / 2 - 1] + rtt[iters / 2]) / 2;
    long k = (long)((double)iters * 0.99 + 0.999999);
    r.p99 = rtt[(k < 1 ? 1 : k > iters ? iters : k) - 1];
    report(r);
}

static void echo(long iters) {
    mqd_t p, q;
    char *buf = malloc((size_t)len);
    if (!buf)
        die("malloc");
    setup(cpu_b, &p, "-ping", &q, "-pong");
    long c0 = csw_now();
    long long t0 = now_ns();
    for (long i = 0; i < iters; i++)
        send_or_die(q, buf, recv_or_die(p, buf));
    report((struct result){0, 0, csw_now() - c0, now_ns() - t0});
}

static void consumer(long total) {
    mqd_t q;
    char *buf = malloc((size_t)len);
    if (!buf)
        die("malloc");
    setup(cpu_a, &q, "", NULL, NULL);
    long c0 = csw_now();
    long long t0 = now_ns();
    for (long i = 0; i < total; i++)
        if (recv_or_die(q, buf) != (size_t)len)
            die("wrong length");
    long long el = now_ns() - t0;
    if (buf[0] != 0x5a)
        die("altered message");
    report((struct result){(double)total * 1e9 / (double)(el ? el : 1), 0, csw_now() - c0, el});
}

static void producer(long each) {
    mqd_t q;
    char *msg = malloc((size_t)len);
    if (!msg)
        die("malloc");
    memset(msg, 0x5a, (size_t)len);
    setup(cpu_b, &q, "", NULL, NULL);
    long c0 = csw_now();
    long long t0 = now_ns();
    for (long i = 0; i < each; i++)
        send_or_die(q, msg, (size_t)len);
    report((struct result){0, 0, csw_now() - c0, now_ns() - t0});
}

static void pair(long iters) {
    char *msg = malloc((size_t)len), *buf = malloc((size_t)len);
    if (!msg || !buf)
        die("malloc");
    memset(msg, 0x5a, (size_t)len);
    if (place != NONE)
        pin(cpu_a);
    mqd_t q = open_q("");
    long c0 = csw_now();
    long long t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        send_or_die(q, msg, (size_t)len);
        recv_or_die(q, buf);
    }
    long long el = now_ns() - t0;
    long csw = csw_now() - c0;
    api.close(q);
    if (!exists)
        unlink_q("");
    printf("%.3f 0 %.6f %lld\n", (double)el / (double)iters, (double)csw / (double)iters, el);
}

/* Forks the children of a case, starts them together, prints the result. */
static int run_children(int n, void (*role[])(long), long arg[], long messages, int first_measures) {
    if (pipe(ready_pipe) || pipe(go_pipe) || pipe(result_pipe))
        die("pipe");
    pid_t pid[8];
    for (int i = 0; i < n; i++) {
        pid[i] = fork();
        if (pid[i] < 0)
            die("fork");
        if (pid[i] == 0) {
            alarm(120); /* a peer that died must not leave this one hanging */
            role[i](arg[i]);
            _exit(0);
        }
    }
    char c;
    for (int i = 0; i < n; i++)
        if (read(ready_pipe[0], &c, 1) != 1)
            die("a child failed before the start");
    for (int i = 0; i < n; i++)
        if (write(go_pipe[1], "g", 1) != 1)
            die("start");
    double value = 0, p99 = 0;
    long csw = 0;
    long long elapsed = 0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(pid[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad = 1;
    }
    close(result_pipe[1]);
    struct result r;
    int got = 0;
    while (read(result_pipe[0], &r, sizeof r) == (ssize_t)sizeof r) {
        got++;
        csw += r.csw;
        if (r.value > 0 && first_measures) {
            value = r.value;
            p99 = r.p99;
            elapsed = r.elapsed;
        }
    }
    if (bad || got != n) {
        fprintf(stderr, "mqbench: a child failed\n");
        return 2;
    }
    printf("%.3f %.3f %.6f %lld\n", value, p99, (double)csw / (double)messages, elapsed);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: mqbench [-a kernel|shmq|boost] [-p none|before|after] [-c A,B] "
                    "[-P producers] [-d depth] [-l len] [-n name] [-x] pair|pingpong|stream ITERS\n");
    exit(2);
}

int main(int argc, char **argv) {
    api = (api_t){mq_open, mq_send, mq_receive, mq_close, mq_unlink};
    snprintf(name, sizeof name, "/mqbench-%d", (int)getpid());
    int o;
    while ((o = getopt(argc, argv, "a:p:c:P:d:l:n:x")) != -1) {
        switch (o) {
        case 'a':
            if (!strcmp(optarg, "kernel"))
                api = (api_t){mq_open, mq_send, mq_receive, mq_close, mq_unlink};
            else if (!strcmp(optarg, "shmq"))
                api = (api_t){shmq_open, shmq_send, shmq_receive, shmq_close, shmq_unlink};
#ifdef WITH_BOOST
            else if (!strcmp(optarg, "boost"))
                api = (api_t){boostmq_open, boostmq_send, boostmq_receive, boostmq_close, boostmq_unlink};
#endif
            else {
                fprintf(stderr, "mqbench: no API '%s' in this build\n", optarg);
                return 2;
            }
            break;
        case 'p':
            place = !strcmp(optarg, "before") ? BEFORE : !strcmp(optarg, "after") ? AFTER : NONE;
            break;
        case 'c':
            if (sscanf(optarg, "%d,%d", &cpu_a, &cpu_b) != 2)
                usage();
            break;
        case 'P':
            producers = atoi(optarg);
            break;
        case 'd':
            depth = atol(optarg);
            break;
        case 'l':
            len = atol(optarg);
            break;
        case 'n':
            snprintf(name, sizeof name, "%s", optarg);
            break;
        case 'x':
            exists = 1;
            break;
        default:
            usage();
        }
    }
    if (argc - optind != 2 || producers < 1 || producers > 7 || depth < 1 || len < 1)
        usage();
    long iters = atol(argv[optind + 1]);
    if (iters < 1)
        usage();
    const char *what = argv[optind];
    int rc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(150);
    if (!strcmp(what, "pair")) {
        pair(iters);
        return 0;
    } else if (!strcmp(what, "pingpong")) {
        void (*role[])(long) = {ping, echo};
        long arg[] = {iters, iters};
        rc = run_children(2, role, arg, 2 * iters, 1);
        if (!exists) {
            unlink_q("-ping");
            unlink_q("-pong");
        }
    } else if (!strcmp(what, "stream")) {
        long each = (iters + producers - 1) / producers;
        void (*role[8])(long);
        long arg[8];
        role[0] = consumer;
        arg[0] = each * producers;
        for (int i = 1; i <= producers; i++) {
            role[i] = producer;
            arg[i] = each;
        }
        rc = run_children(producers + 1, role, arg, each * producers, 1);
        if (!exists)
            unlink_q("");
    } else {
        usage();
        return 2;
    }
    return rc;
}
