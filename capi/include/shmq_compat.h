/* shmq: POSIX message queues in shared memory. SPDX-License-Identifier: MIT
 *
 * Compatibility header: include it after <mqueue.h> (or pass
 * `-include shmq_compat.h`) and link with -lshmq, and existing source that
 * calls mq_open, mq_send, ... uses shmq instead of the kernel's queues,
 * with no other change. Works with _FORTIFY_SOURCE: glibc's fortified
 * mq_open wrapper is declared under its own name and never called.
 */
#ifndef SHMQ_COMPAT_H
#define SHMQ_COMPAT_H

#include <mqueue.h>
#include "shmq.h"

#undef mq_open
#undef mq_close
#undef mq_unlink
#undef mq_getattr
#undef mq_setattr
#undef mq_notify
#undef mq_send
#undef mq_timedsend
#undef mq_receive
#undef mq_timedreceive

#define mq_open shmq_open
#define mq_close shmq_close
#define mq_unlink shmq_unlink
#define mq_getattr shmq_getattr
#define mq_setattr shmq_setattr
#define mq_notify shmq_notify
#define mq_send shmq_send
#define mq_timedsend shmq_timedsend
#define mq_receive shmq_receive
#define mq_timedreceive shmq_timedreceive

#endif /* SHMQ_COMPAT_H */
