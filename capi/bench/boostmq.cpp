// Boost.Interprocess's message_queue behind mq_*-shaped functions, for
// mqbench -a boost. SPDX-License-Identifier: MIT
#include <boost/interprocess/ipc/message_queue.hpp>

#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <fcntl.h>
#include <mqueue.h>
#include <string>
#include <sys/types.h>

namespace bi = boost::interprocess;

namespace {
const int MAX_QUEUES = 16;
bi::message_queue *queues[MAX_QUEUES];

// Boost names have no leading slash.
std::string boost_name(const char *name) {
    return name[0] == '/' ? std::string(name + 1) : std::string(name);
}

bi::message_queue *get(mqd_t q) {
    if (q < 0 || q >= MAX_QUEUES || !queues[q]) {
        errno = EBADF;
        return nullptr;
    }
    return queues[q];
}
} // namespace

extern "C" mqd_t boostmq_open(const char *name, int oflag, ...) {
    long maxmsg = 10, msgsize = 8192;
    if (oflag & O_CREAT) {
        va_list ap;
        va_start(ap, oflag);
        (void)va_arg(ap, unsigned);
        const struct mq_attr *a = va_arg(ap, const struct mq_attr *);
        va_end(ap);
        if (a) {
            maxmsg = a->mq_maxmsg;
            msgsize = a->mq_msgsize;
        }
    }
    for (int i = 0; i < MAX_QUEUES; i++) {
        if (queues[i])
            continue;
        try {
            if (oflag & O_CREAT)
                queues[i] = new bi::message_queue(bi::open_or_create, boost_name(name).c_str(),
                                                  (std::size_t)maxmsg, (std::size_t)msgsize);
            else
                queues[i] = new bi::message_queue(bi::open_only, boost_name(name).c_str());
        } catch (const bi::interprocess_exception &) {
            errno = EINVAL;
            return (mqd_t)-1;
        }
        return (mqd_t)i;
    }
    errno = EMFILE;
    return (mqd_t)-1;
}

extern "C" int boostmq_send(mqd_t q, const char *msg, size_t len, unsigned prio) {
    bi::message_queue *m = get(q);
    if (!m)
        return -1;
    try {
        m->send(msg, len, prio);
    } catch (const bi::interprocess_exception &) {
        errno = EMSGSIZE;
        return -1;
    }
    return 0;
}

extern "C" ssize_t boostmq_receive(mqd_t q, char *buf, size_t len, unsigned *prio) {
    bi::message_queue *m = get(q);
    if (!m)
        return -1;
    bi::message_queue::size_type got = 0;
    unsigned p = 0;
    try {
        m->receive(buf, len, got, p);
    } catch (const bi::interprocess_exception &) {
        errno = EMSGSIZE;
        return -1;
    }
    if (prio)
        *prio = p;
    return (ssize_t)got;
}

extern "C" int boostmq_close(mqd_t q) {
    bi::message_queue *m = get(q);
    if (!m)
        return -1;
    delete m;
    queues[q] = nullptr;
    return 0;
}

extern "C" int boostmq_unlink(const char *name) {
    return bi::message_queue::remove(boost_name(name).c_str()) ? 0 : -1;
}
