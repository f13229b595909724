/* shmq's descriptor rules, beyond POSIX: EBADF for anything that is not an
 * open shmq descriptor, and shmq_close never closes a file descriptor it
 * does not own (the kernel's mq_close would close any fd). Built against
 * shmq only, calling the shmq_* names directly. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
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

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "/shmq-desc-%d", (int)getpid());
    struct mq_attr attr = {0}, a;
    attr.mq_maxmsg = 2;
    attr.mq_msgsize = 8;
    mqd_t q = shmq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    CHECK(q >= 0);
    /* The descriptor is a close-on-exec file descriptor. */
    CHECK((fcntl(q, F_GETFD) & FD_CLOEXEC) != 0);
    int plain = open("/dev/null", O_RDONLY);
    int bad[] = {-1, plain, 12345, q + 1000};
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        CHECK(shmq_getattr(bad[i], &a) == -1 && errno == EBADF);
        errno = 0;
        CHECK(shmq_send(bad[i], "x", 1, 0) == -1 && errno == EBADF);
        errno = 0;
        CHECK(shmq_close(bad[i]) == -1 && errno == EBADF);
    }
    CHECK(fcntl(plain, F_GETFD) != -1); /* shmq_close left it open */
    close(plain);
    /* A forked child's descriptor works and shares O_NONBLOCK. */
    pid_t pid = fork();
    if (pid == 0) {
        struct mq_attr nb = {0};
        nb.mq_flags = O_NONBLOCK;
        int ok = shmq_send(q, "child", 5, 3) == 0 && shmq_setattr(q, &nb, NULL) == 0;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(shmq_getattr(q, &a) == 0 && a.mq_curmsgs == 1 && (a.mq_flags & O_NONBLOCK));
    char buf[8];
    unsigned prio = 0;
    CHECK(shmq_receive(q, buf, sizeof buf, &prio) == 5 && prio == 3);
    errno = 0;
    CHECK(shmq_receive(q, buf, sizeof buf, &prio) == -1 && errno == EAGAIN);
    /* NULL where a pointer is required: EFAULT, as the kernel. */
    errno = 0;
    CHECK(shmq_getattr(q, NULL) == -1 && errno == EFAULT);
    errno = 0;
    CHECK(shmq_send(q, NULL, 4, 0) == -1 && errno == EFAULT);
    /* The explicit four-argument open. */
    mqd_t q4 = shmq_open4(name, O_RDONLY, 0, NULL);
    CHECK(q4 >= 0 && q4 != q);
    CHECK(shmq_close(q4) == 0);
    CHECK(shmq_close(q) == 0);
    errno = 0;
    CHECK(shmq_close(q) == -1 && errno == EBADF);
    CHECK(shmq_unlink(name) == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
