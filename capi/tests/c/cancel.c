/* mq_receive, mq_timedreceive, mq_send and mq_timedsend are cancellation
 * points: a thread blocked in one is cancelled by pthread_cancel, and its
 * cleanup handlers run. POSIX only. */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
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

static mqd_t q;
static volatile int cleaned;
static void cleanup(void *arg) { (void)arg; cleaned = 1; }

static void *blocked(void *arg) {
    int which = *(int *)arg;
    char buf[16];
    struct timespec far;
    clock_gettime(CLOCK_REALTIME, &far);
    far.tv_sec += 3600;
    pthread_cleanup_push(cleanup, NULL);
    switch (which) {
    case 0: mq_receive(q, buf, sizeof buf, NULL); break;
    case 1: mq_timedreceive(q, buf, sizeof buf, NULL, &far); break;
    case 2: mq_send(q, "x", 1, 0); break;
    default: mq_timedsend(q, "x", 1, 0, &far); break;
    }
    pthread_cleanup_pop(0);
    return (void *)1; /* not reached when cancelled */
}

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "/shmq-cancel-%d", (int)getpid());
    struct mq_attr attr = {0};
    attr.mq_maxmsg = 1;
    attr.mq_msgsize = 16;
    q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    CHECK(q != (mqd_t)-1);
    for (int which = 0; which < 4; which++) {
        if (which == 2) /* the senders block on a full queue */
            CHECK(mq_send(q, "full", 4, 0) == 0);
        pthread_t t;
        cleaned = 0;
        CHECK(pthread_create(&t, NULL, blocked, &which) == 0);
        usleep(100 * 1000); /* let it block */
        CHECK(pthread_cancel(t) == 0);
        void *ret = NULL;
        CHECK(pthread_join(t, &ret) == 0);
        CHECK(ret == PTHREAD_CANCELED);
        CHECK(cleaned == 1);
    }
    struct mq_attr now;
    CHECK(mq_getattr(q, &now) == 0 && now.mq_curmsgs == 1); /* nothing lost or added */
    CHECK(mq_close(q) == 0);
    CHECK(mq_unlink(name) == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
