/*
 * truncate.c - a queue file truncated by another process while this one
 * sends and receives: every call fails with EBADMSG, the program lives on.
 * Needs the drop-in (the kernel's queues have no file to truncate) and
 * SHMQ_DIR.
 */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond, what)                                                   \
    do {                                                                    \
        if (cond) {                                                         \
            passed++;                                                       \
        } else {                                                            \
            failed++;                                                       \
            printf("FAIL %s:%d: %s (errno %d: %s)\n", __FILE__, __LINE__,   \
                   what, errno, strerror(errno));                           \
        }                                                                   \
    } while (0)

#define MSGSIZE 512

static void one(const char *dir, int round, const char *how) {
    char name[64], path[4096];
    snprintf(name, sizeof name, "/sigbus-c-%d-%d", (int)getpid(), round);
    snprintf(path, sizeof path, "%s%s", dir, name);
    struct mq_attr a;
    memset(&a, 0, sizeof a);
    a.mq_maxmsg = 8;
    a.mq_msgsize = MSGSIZE;
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a);
    CHECK(q != (mqd_t)-1, "mq_open");
    if (q == (mqd_t)-1)
        return;
    struct stat st;
    CHECK(stat(path, &st) == 0, "the queue file is in SHMQ_DIR");
    off_t to = strcmp(how, "page") == 0 ? 4096
             : strcmp(how, "zero") == 0 ? 0
             : st.st_size / 2;
    pid_t kid = fork();
    if (kid == 0) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        _exit(truncate(path, to) == 0 ? 0 : 1);
    }
    char buf[MSGSIZE];
    memset(buf, 0x5a, sizeof buf);
    long pairs = 0;
    int err = 0;
    for (;;) {
        unsigned prio = 0;
        if (mq_send(q, buf, MSGSIZE, 1) != 0) {
            err = errno;
            break;
        }
        ssize_t n = mq_receive(q, buf, MSGSIZE, &prio);
        if (n < 0) {
            err = errno;
            break;
        }
        if (n != MSGSIZE || prio != 1 || buf[0] != 0x5a || buf[MSGSIZE - 1] != 0x5a) {
            errno = 0;
            CHECK(0, "a spoiled message handed out");
            break;
        }
        if (mq_getattr(q, &a) != 0) {
            err = errno;
            break;
        }
        pairs++;
    }
    errno = err;
    CHECK(err == EBADMSG, "the first failing call says EBADMSG");
    printf("%s: EBADMSG after %ld pairs\n", how, pairs);
    int status = -1;
    CHECK(waitpid(kid, &status, 0) == kid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "the truncating child");
    unsigned prio;
    errno = 0;
    CHECK(mq_send(q, buf, 1, 0) == -1 && errno == EBADMSG, "mq_send after");
    errno = 0;
    CHECK(mq_receive(q, buf, MSGSIZE, &prio) == -1 && errno == EBADMSG,
          "mq_receive after");
    errno = 0;
    CHECK(mq_getattr(q, &a) == -1 && errno == EBADMSG, "mq_getattr after");
    errno = 0;
    mqd_t again = mq_open(name, O_RDWR);
    CHECK(again == (mqd_t)-1 && errno == EBADMSG, "mq_open refuses the file");
    CHECK(mq_close(q) == 0, "mq_close");
    CHECK(mq_unlink(name) == 0, "mq_unlink");
}

int main(void) {
    const char *dir = getenv("SHMQ_DIR");
    if (dir == NULL) {
        printf("SHMQ_DIR is not set\n0 passed, 1 failed\n");
        return 1;
    }
    alarm(60); /* watchdog: SIGALRM ends a hung run */
    one(dir, 0, "page");
    one(dir, 1, "zero");
    one(dir, 2, "half");
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
