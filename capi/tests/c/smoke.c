/* Smoke test of the mq_* surface: open, send in several priorities,
 * receive in order, attributes, non-blocking, unlink. POSIX only. */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif

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

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "/shmq-smoke-%d", (int)getpid());
    struct mq_attr attr = {0};
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 32;
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    CHECK(q != (mqd_t)-1);
    mqd_t ro = mq_open(name, O_RDONLY);
    CHECK(ro != (mqd_t)-1);
    CHECK(mq_send(q, "low", 3, 1) == 0);
    CHECK(mq_send(q, "high", 4, 30) == 0);
    CHECK(mq_send(q, "", 0, 30) == 0);
    struct mq_attr now;
    CHECK(mq_getattr(q, &now) == 0 && now.mq_curmsgs == 3 && now.mq_maxmsg == 4 && now.mq_msgsize == 32);
    char buf[32];
    unsigned prio = 0;
    ssize_t n = mq_receive(ro, buf, sizeof buf, &prio);
    CHECK(n == 4 && prio == 30 && memcmp(buf, "high", 4) == 0);
    n = mq_receive(ro, buf, sizeof buf, &prio);
    CHECK(n == 0 && prio == 30);
    n = mq_receive(ro, buf, sizeof buf, NULL);
    CHECK(n == 3 && memcmp(buf, "low", 3) == 0);
    errno = 0;
    CHECK(mq_send(ro, "x", 1, 1) == -1 && errno == EBADF);
    struct mq_attr nb = {0}, old;
    nb.mq_flags = O_NONBLOCK;
    CHECK(mq_setattr(ro, &nb, &old) == 0 && old.mq_flags == 0);
    errno = 0;
    CHECK(mq_receive(ro, buf, sizeof buf, &prio) == -1 && errno == EAGAIN);
    errno = 0;
    CHECK(mq_close(-1) == -1 && errno == EBADF);
    /* Linux descriptors are file descriptors: a dup works and shares the
     * open description (O_NONBLOCK); an ordinary file descriptor does not. */
    int dupd = fcntl(ro, F_DUPFD_CLOEXEC, 0);
    CHECK(dupd >= 0);
    CHECK(mq_getattr(dupd, &now) == 0 && (now.mq_flags & O_NONBLOCK) && now.mq_maxmsg == 4);
    CHECK(mq_close(dupd) == 0);
    int plain = open("/dev/null", O_RDONLY);
    errno = 0;
    CHECK(mq_getattr(plain, &now) == -1 && errno == EBADF);
    close(plain);
    CHECK(mq_unlink(name) == 0);
    CHECK(mq_send(q, "after", 5, 2) == 0);
    CHECK(mq_receive(ro, buf, sizeof buf, &prio) == 5 && prio == 2);
    CHECK(mq_close(ro) == 0);
    CHECK(mq_close(q) == 0);
    errno = 0;
    CHECK(mq_close(q) == -1 && errno == EBADF);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
