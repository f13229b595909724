/*
 * attr.c - mq_getattr and mq_setattr: attributes as created, mq_curmsgs
 * following sends and receives, O_NONBLOCK as the only settable flag (other
 * fields ignored, other bits EINVAL), the old attributes returned, and the
 * flag belonging to one open description.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

static struct mq_attr attr_of(long flags, long maxmsg, long msgsize,
                              long curmsgs)
{
    struct mq_attr a;
    memset(&a, 0, sizeof a);
    a.mq_flags = flags;
    a.mq_maxmsg = maxmsg;
    a.mq_msgsize = msgsize;
    a.mq_curmsgs = curmsgs;
    return a;
}

static void expect_attr(mqd_t q, long flags, long maxmsg, long msgsize,
                        long curmsgs)
{
    struct mq_attr a;
    memset(&a, 0x55, sizeof a);
    if (!CHECK_OK(mq_getattr(q, &a)))
        return;
    CHECK_EQ(a.mq_flags, flags);
    CHECK_EQ(a.mq_maxmsg, maxmsg);
    CHECK_EQ(a.mq_msgsize, msgsize);
    CHECK_EQ(a.mq_curmsgs, curmsgs);
}

/* getattr reports the creation attributes and the open flags. */
static void test_getattr_fresh(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q = mqt_create(name, "fresh", O_RDWR, 3, 100), q2, q3;

    expect_attr(q, 0, 3, 100, 0);
    CHECK_OK(q2 = mq_open(name, O_RDONLY | O_NONBLOCK));
    expect_attr(q2, O_NONBLOCK, 3, 100, 0);
    CHECK_OK(q3 = mq_open(name, O_WRONLY));
    expect_attr(q3, 0, 3, 100, 0); /* any access mode may ask */
    CHECK_OK(mq_close(q3));
    CHECK_OK(mq_close(q2));
    CHECK_OK(mq_close(q));
    mqt_unlink(name);

    /* The smallest queue: one message of one byte. */
    q = mqt_create(name, "tiny", O_RDWR | O_NONBLOCK, 1, 1);
    expect_attr(q, O_NONBLOCK, 1, 1, 0);
    CHECK_OK(mq_send(q, "1", 1, 0));
    CHECK_ERR(mq_send(q, "2", 1, 0), EAGAIN);
    CHECK_ERR(mq_send(q, "22", 2, 0), EMSGSIZE);
    expect_attr(q, O_NONBLOCK, 1, 1, 1);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* mq_curmsgs follows every send and receive, through any descriptor, and
 * failed calls leave it alone. */
static void test_curmsgs_tracks(void)
{
    char name[MQT_NAME_LEN], buf[65];
    mqd_t q = mqt_create(name, "curmsgs", O_RDWR | O_NONBLOCK, 5, 64), r;

    memset(buf, 'b', sizeof buf);
    CHECK_OK(r = mq_open(name, O_RDONLY | O_NONBLOCK));
    for (int i = 1; i <= 5; i++) {
        CHECK_OK(mq_send(q, "m", 1, (unsigned)i));
        expect_attr(q, O_NONBLOCK, 5, 64, i);
        expect_attr(r, O_NONBLOCK, 5, 64, i);
    }
    CHECK_ERR(mq_send(q, "m", 1, 0), EAGAIN);
    CHECK_ERR(mq_send(q, buf, 65, 0), EMSGSIZE);
    expect_attr(q, O_NONBLOCK, 5, 64, 5);
    CHECK_ERR(mq_receive(r, buf, 10, NULL), EMSGSIZE);
    expect_attr(r, O_NONBLOCK, 5, 64, 5);
    for (int i = 4; i >= 0; i--) {
        CHECK_EQ(mq_receive(r, buf, sizeof buf, NULL), 1);
        expect_attr(q, O_NONBLOCK, 5, 64, i);
    }
    CHECK_ERR(mq_receive(r, buf, sizeof buf, NULL), EAGAIN);
    expect_attr(r, O_NONBLOCK, 5, 64, 0);
    CHECK_OK(mq_close(r));
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* setattr changes O_NONBLOCK and nothing else, and returns the old
 * attributes. */
static void test_setattr_only_nonblock(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr set, old;
    struct timespec past = mqt_deadline_ms(-1000);
    mqd_t q = mqt_create(name, "setattr", O_RDWR, 4, 64);

    CHECK_OK(mq_send(q, "a", 1, 0));
    CHECK_OK(mq_send(q, "b", 1, 0));

    /* Set O_NONBLOCK; the other fields are garbage and must be ignored. */
    set = attr_of(O_NONBLOCK, 999, 12345, 77);
    memset(&old, 0x55, sizeof old);
    CHECK_OK(mq_setattr(q, &set, &old));
    CHECK_EQ(old.mq_flags, 0);
    CHECK_EQ(old.mq_maxmsg, 4);
    CHECK_EQ(old.mq_msgsize, 64);
    CHECK_EQ(old.mq_curmsgs, 2);
    expect_attr(q, O_NONBLOCK, 4, 64, 2);

    /* It really is non-blocking now. */
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
    for (int i = 0; i < 4; i++)
        CHECK_OK(mq_send(q, "c", 1, 0));
    CHECK_ERR(mq_send(q, "c", 1, 0), EAGAIN);

    /* Clear it again; old attributes show the flag and the 4 messages. */
    set = attr_of(0, 1, 1, 0);
    memset(&old, 0x55, sizeof old);
    CHECK_OK(mq_setattr(q, &set, &old));
    CHECK_EQ(old.mq_flags, O_NONBLOCK);
    CHECK_EQ(old.mq_maxmsg, 4);
    CHECK_EQ(old.mq_msgsize, 64);
    CHECK_EQ(old.mq_curmsgs, 4);
    expect_attr(q, 0, 4, 64, 4);

    /* Blocking again: a full queue now waits (and times out). */
    CHECK_ERR(mq_timedsend(q, "d", 1, 0, &past), ETIMEDOUT);

    /* omqstat may be NULL; setting the current value is fine. */
    set = attr_of(0, 0, 0, 0);
    CHECK_OK(mq_setattr(q, &set, NULL));
    expect_attr(q, 0, 4, 64, 4);
    set = attr_of(O_NONBLOCK, 0, 0, 0);
    CHECK_OK(mq_setattr(q, &set, NULL));
    CHECK_OK(mq_setattr(q, &set, NULL));
    expect_attr(q, O_NONBLOCK, 4, 64, 4);

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Any mq_flags bit other than O_NONBLOCK is EINVAL and changes nothing. */
static void test_setattr_bad_flags(void)
{
    const long bad[] = {
        O_RDWR, O_WRONLY, O_CREAT, O_EXCL, O_APPEND, O_NONBLOCK | O_RDWR,
        O_NONBLOCK | O_CREAT, O_NONBLOCK | O_CLOEXEC, 1L << (sizeof(long) * 8 - 2),
        LONG_MIN, -1L,
    };
    char name[MQT_NAME_LEN];
    struct mq_attr set;
    mqd_t q = mqt_create(name, "badflags", O_RDWR, 2, 32);

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct mq_attr old;
        set = attr_of(bad[i], 2, 32, 0);
        if (!CHECK_ERR(mq_setattr(q, &set, &old), EINVAL))
            printf("  with mq_flags %#lx\n", (unsigned long)bad[i]);
        expect_attr(q, 0, 2, 32, 0);
    }

    /* Same with O_NONBLOCK already set: it stays set. */
    set = attr_of(O_NONBLOCK, 0, 0, 0);
    CHECK_OK(mq_setattr(q, &set, NULL));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        set = attr_of(bad[i] & ~(long)O_NONBLOCK, 2, 32, 0);
        if (set.mq_flags == 0)
            continue;
        CHECK_ERR(mq_setattr(q, &set, NULL), EINVAL);
        expect_attr(q, O_NONBLOCK, 2, 32, 0);
    }

    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

static void test_attr_ebadf(void)
{
    char name[MQT_NAME_LEN];
    struct mq_attr a = attr_of(0, 0, 0, 0), old;
    mqd_t q;

    CHECK_ERR(mq_getattr((mqd_t)-1, &a), EBADF);
    CHECK_ERR(mq_setattr((mqd_t)-1, &a, &old), EBADF);
    q = mqt_create(name, "ebadf", O_RDWR, 2, 32);
    CHECK_OK(mq_close(q));
    CHECK_ERR(mq_getattr(q, &a), EBADF);
    CHECK_ERR(mq_setattr(q, &a, NULL), EBADF);
    mqt_unlink(name);
}

/* O_NONBLOCK belongs to one open description: a second mq_open of the
 * same queue has its own, whatever the access mode. */
static void test_nonblock_per_open(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr set;
    struct timespec past = mqt_deadline_ms(-1000);
    mqd_t a = mqt_create(name, "per-open", O_RDWR, 2, 64), b, w;

    CHECK_OK(b = mq_open(name, O_RDWR));
    CHECK_OK(w = mq_open(name, O_WRONLY));
    set = attr_of(O_NONBLOCK, 0, 0, 0);
    CHECK_OK(mq_setattr(a, &set, NULL));
    CHECK_OK(mq_setattr(w, &set, NULL));
    expect_attr(a, O_NONBLOCK, 2, 64, 0);
    expect_attr(b, 0, 2, 64, 0);
    expect_attr(w, O_NONBLOCK, 2, 64, 0);
    CHECK_ERR(mq_receive(a, buf, sizeof buf, NULL), EAGAIN);
    CHECK_ERR(mq_timedreceive(b, buf, sizeof buf, NULL, &past), ETIMEDOUT);
    CHECK_OK(mq_send(w, "1", 1, 0));
    CHECK_OK(mq_send(w, "2", 1, 0));
    CHECK_ERR(mq_send(w, "3", 1, 0), EAGAIN);
    CHECK_ERR(mq_timedsend(b, "3", 1, 0, &past), ETIMEDOUT);

    CHECK_OK(mq_close(w));
    CHECK_OK(mq_close(b));
    CHECK_OK(mq_close(a));
    mqt_unlink(name);
}

int main(void)
{
    mqt_init("attr");
    MQT_RUN(test_getattr_fresh);
    MQT_RUN(test_curmsgs_tracks);
    MQT_RUN(test_setattr_only_nonblock);
    MQT_RUN(test_setattr_bad_flags);
    MQT_RUN(test_attr_ebadf);
    MQT_RUN(test_nonblock_per_open);
    return mqt_finish();
}
