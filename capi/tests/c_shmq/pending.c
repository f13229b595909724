/* Receive with acknowledgement from C: shmq_receive_pending,
 * shmq_timedreceive_pending, shmq_ack and shmq_nack. Order kept by a
 * nack, capacity taken by pending messages, a forked child holding
 * nothing, and a child killed while holding a message: it comes back.
 * Built against shmq only (the kernel's queues have no such calls). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

static long curmsgs(mqd_t q) {
    struct mq_attr a;
    return shmq_getattr(q, &a) == 0 ? a.mq_curmsgs : -1;
}

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "/shmq-pending-%d", (int)getpid());
    struct mq_attr attr = {0};
    attr.mq_maxmsg = 3;
    attr.mq_msgsize = 8;
    mqd_t q = shmq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    CHECK(q >= 0);
    CHECK(shmq_send(q, "a", 1, 1) == 0);
    CHECK(shmq_send(q, "b", 1, 1) == 0);
    char buf[8], buf2[8];
    unsigned prio = 0;
    shmq_pending *p = NULL, *p2 = NULL;

    /* Pending: not counted, not receivable, filling its slot. */
    ssize_t n = shmq_receive_pending(q, buf, sizeof buf, &prio, &p);
    CHECK(n == 1 && buf[0] == 'a' && prio == 1 && p != NULL);
    CHECK(curmsgs(q) == 1);
    CHECK(shmq_send(q, "c", 1, 1) == 0);
    struct mq_attr nb = {0};
    nb.mq_flags = O_NONBLOCK;
    CHECK(shmq_setattr(q, &nb, NULL) == 0);
    errno = 0;
    CHECK(shmq_send(q, "d", 1, 1) == -1 && errno == EAGAIN);
    /* Returned: first again, ahead of b and c. */
    CHECK(shmq_nack(p) == 0);
    n = shmq_receive_pending(q, buf, sizeof buf, &prio, &p);
    CHECK(n == 1 && buf[0] == 'a');
    CHECK(shmq_ack(p) == 0);
    CHECK(curmsgs(q) == 2);

    /* The timed variant, and its errors. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    n = shmq_timedreceive_pending(q, buf, sizeof buf, &prio, &ts, &p);
    CHECK(n == 1 && buf[0] == 'b');
    n = shmq_timedreceive_pending(q, buf2, sizeof buf2, NULL, &ts, &p2);
    CHECK(n == 1 && buf2[0] == 'c');
    errno = 0;
    shmq_pending *none = NULL;
    CHECK(shmq_receive_pending(q, buf, sizeof buf, &prio, &none) == -1 && errno == EAGAIN && none == NULL);
    errno = 0;
    CHECK(shmq_receive_pending(q, buf, sizeof buf, &prio, NULL) == -1 && errno == EFAULT);
    errno = 0;
    CHECK(shmq_timedreceive_pending(q, buf, sizeof buf, &prio, NULL, &none) == -1 && errno == EFAULT);
    errno = 0;
    CHECK(shmq_receive_pending(q, buf, 4, &prio, &none) == -1 && errno == EMSGSIZE);
    errno = 0;
    CHECK(shmq_ack(NULL) == -1 && errno == EINVAL);

    /* A forked child holds nothing: its ack fails, the parent's works. */
    pid_t pid = fork();
    if (pid == 0) {
        errno = 0;
        int r = shmq_ack(p);
        _exit(r == -1 && errno == EBADMSG ? 0 : 1);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(curmsgs(q) == 0);
    CHECK(shmq_ack(p) == 0);
    CHECK(shmq_nack(p2) == 0);
    CHECK(curmsgs(q) == 1);

    /* A child killed while it holds the message: it comes back, to a
     * receiver blocked on the empty queue, within a bounded time. */
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid = fork();
    if (pid == 0) {
        shmq_pending *mine = NULL;
        char b[8];
        if (shmq_receive_pending(q, b, sizeof b, NULL, &mine) != 1)
            _exit(1);
        if (write(ready[1], "x", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1);
    CHECK(curmsgs(q) == 0);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    nb.mq_flags = 0;
    CHECK(shmq_setattr(q, &nb, NULL) == 0);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    n = shmq_timedreceive(q, buf, sizeof buf, &prio, &ts);
    CHECK(n == 1 && buf[0] == 'c');

    CHECK(shmq_close(q) == 0);
    CHECK(shmq_unlink(name) == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
