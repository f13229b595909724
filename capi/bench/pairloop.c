/*
 * pairloop.c - a tight shmq_send + shmq_receive loop (64 B, one queue),
 * for instruction counts under callgrind; the C twin of the Rust
 * examples/pairloop.rs. Usage: pairloop [iterations] (default 100000).
 * Queues go to SHMQ_DIR (the script sets a private one).
 */
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "shmq.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    char name[64];
    snprintf(name, sizeof name, "/pairloop-%d", (int)getpid());
    struct mq_attr attr = {.mq_maxmsg = 10, .mq_msgsize = 64};
    mqd_t q = shmq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
    if (q == (mqd_t)-1) {
        perror("shmq_open");
        return 1;
    }
    char msg[64], buf[64];
    memset(msg, 7, sizeof msg);
    /* volatile: lengths unknown at compile time, as for a real caller. */
    volatile size_t len = sizeof msg;
    unsigned prio;
    for (long i = 0; i < n; i++) {
        if (shmq_send(q, msg, len, 1) != 0 || shmq_receive(q, buf, len, &prio) != 64) {
            perror("pair");
            return 1;
        }
    }
    shmq_close(q);
    shmq_unlink(name);
    return 0;
}
