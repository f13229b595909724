/*
 * open_unlink.c - mq_open, mq_unlink and mq_close: creation, names,
 * attributes at creation, access modes, permissions and umask, unlinking
 * while open, and EBADF from mq_close.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <grp.h>

#define UNPRIVILEGED_ID 65534 /* "nobody" */

static struct mq_attr attr_of(long maxmsg, long msgsize)
{
    struct mq_attr a;
    memset(&a, 0, sizeof a);
    a.mq_maxmsg = maxmsg;
    a.mq_msgsize = msgsize;
    return a;
}

/* Create, then open the existing queue read-only, write-only and
 * read-write; messages flow between the descriptors. */
static void test_create_and_open_existing(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr a = attr_of(4, 64), got;
    mqd_t q, r, w, rw;
    unsigned prio = 0;

    CHECK_OK(q = mq_open(mqt_name(name, "open"), O_CREAT | O_EXCL | O_RDWR,
                         0600, &a));
    CHECK_OK(r = mq_open(name, O_RDONLY));
    CHECK_OK(w = mq_open(name, O_WRONLY));
    CHECK_OK(rw = mq_open(name, O_RDWR));
    CHECK(q != r && q != w && q != rw && r != w && r != rw && w != rw);

    CHECK_OK(mq_send(w, "hello", 5, 3));
    CHECK_EQ(mq_receive(r, buf, sizeof buf, &prio), 5);
    CHECK(memcmp(buf, "hello", 5) == 0);
    CHECK_EQ(prio, 3);
    CHECK_OK(mq_send(rw, "x", 1, 0));
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);

    /* Closing one descriptor leaves the others working. */
    CHECK_OK(mq_close(rw));
    CHECK_OK(mq_send(q, "y", 1, 0));
    CHECK_EQ(mq_receive(r, buf, sizeof buf, NULL), 1);

    /* All descriptors see the attributes the queue was created with. */
    CHECK_OK(mq_getattr(r, &got));
    CHECK_EQ(got.mq_maxmsg, 4);
    CHECK_EQ(got.mq_msgsize, 64);

    CHECK_OK(mq_close(r));
    CHECK_OK(mq_close(w));
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* O_CREAT on an existing queue opens it; attr is then ignored, even if
 * it would be invalid for a creation. */
static void test_creat_existing_ignores_attr(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr a = attr_of(4, 64), other = attr_of(2, 32);
    struct mq_attr invalid = attr_of(0, -1), got;
    mqd_t q, q2, q3;

    q = mqt_create(name, "creat-existing", O_RDWR, 4, 64);
    CHECK_OK(mq_send(q, "kept", 4, 1));

    CHECK_OK(q2 = mq_open(name, O_CREAT | O_RDWR, 0600, &other));
    CHECK_OK(mq_getattr(q2, &got));
    CHECK_EQ(got.mq_maxmsg, a.mq_maxmsg);
    CHECK_EQ(got.mq_msgsize, a.mq_msgsize);
    CHECK_EQ(got.mq_curmsgs, 1);

    CHECK_OK(q3 = mq_open(name, O_CREAT | O_RDWR, 0600, &invalid));
    CHECK_OK(mq_getattr(q3, &got));
    CHECK_EQ(got.mq_maxmsg, 4);
    CHECK_EQ(got.mq_msgsize, 64);

    /* The message sent before is still there: nothing was re-created. */
    CHECK_EQ(mq_receive(q3, buf, sizeof buf, NULL), 4);
    CHECK(memcmp(buf, "kept", 4) == 0);

    CHECK_OK(mq_close(q3));
    CHECK_OK(mq_close(q2));
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* O_CREAT|O_EXCL on an existing name fails with EEXIST and leaves the
 * existing queue alone. */
static void test_excl_eexist(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr a = attr_of(2, 16), got;
    mqd_t q;

    q = mqt_create(name, "excl", O_RDWR, 4, 64);
    CHECK_OK(mq_send(q, "m", 1, 0));
    CHECK_ERR(mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a), EEXIST);
    CHECK_ERR(mq_open(name, O_CREAT | O_EXCL | O_RDONLY, 0600, &a), EEXIST);
    CHECK_ERR(mq_open(name, O_CREAT | O_EXCL | O_WRONLY, 0600, NULL), EEXIST);
    CHECK_OK(mq_getattr(q, &got));
    CHECK_EQ(got.mq_maxmsg, 4);
    CHECK_EQ(got.mq_msgsize, 64);
    CHECK_EQ(got.mq_curmsgs, 1);
    CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* Opening a name that does not exist without O_CREAT: ENOENT. */
static void test_open_missing_enoent(void)
{
    char name[MQT_NAME_LEN];
    mqt_name(name, "missing");
    CHECK_ERR(mq_open(name, O_RDONLY), ENOENT);
    CHECK_ERR(mq_open(name, O_WRONLY), ENOENT);
    CHECK_ERR(mq_open(name, O_RDWR | O_NONBLOCK), ENOENT);
    /* O_EXCL without O_CREAT has no meaning: still ENOENT. */
    CHECK_ERR(mq_open(name, O_RDWR | O_EXCL), ENOENT);
    mqt_unlink(name);
}

/* maxmsg <= 0 or msgsize <= 0 when creating: EINVAL, nothing created. */
static void test_bad_attr_einval(void)
{
    static const long bad[][2] = {
        { 0, 64 }, { -1, 64 }, { 4, 0 }, { 4, -1 }, { 0, 0 }, { LONG_MIN, 64 },
        { 4, LONG_MIN },
    };
    char name[MQT_NAME_LEN];

    mqt_name(name, "badattr");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct mq_attr a = attr_of(bad[i][0], bad[i][1]);
        if (!CHECK_ERR(mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a),
                       EINVAL))
            printf("  with maxmsg %ld, msgsize %ld\n", bad[i][0], bad[i][1]);
        CHECK_ERR(mq_open(name, O_RDWR), ENOENT);
    }
    mqt_unlink(name);
}

/* Names: no leading slash is EINVAL, "/" alone is ENOENT, a second slash
 * is EACCES; with or without O_CREAT, and for mq_unlink. */
static void test_bad_names(void)
{
    char slashed[MQT_NAME_LEN], noslash[MQT_NAME_LEN];
    char twoslash[MQT_NAME_LEN + 2];
    struct mq_attr a = attr_of(2, 16);

    /* Track the names an implementation might wrongly create, so they are
     * removed whatever happens. */
    mqt_name(slashed, "noslash");
    snprintf(noslash, sizeof noslash, "%s", slashed + 1);
    snprintf(twoslash, sizeof twoslash, "%s/b", slashed);

    CHECK_ERR(mq_open(noslash, O_RDWR), EINVAL);
    CHECK_ERR(mq_open(noslash, O_CREAT | O_RDWR, 0600, &a), EINVAL);
    CHECK_ERR(mq_open(slashed, O_RDWR), ENOENT); /* nothing was created */
    CHECK_ERR(mq_unlink(noslash), EINVAL);

    CHECK_ERR(mq_open("/", O_RDWR), ENOENT);
    CHECK_ERR(mq_open("/", O_CREAT | O_RDWR, 0600, &a), ENOENT);
    CHECK_ERR(mq_unlink("/"), ENOENT);

    CHECK_ERR(mq_open(twoslash, O_RDWR), EACCES);
    CHECK_ERR(mq_open(twoslash, O_CREAT | O_RDWR, 0600, &a), EACCES);
    CHECK_ERR(mq_open(slashed, O_RDWR), ENOENT);
    CHECK_ERR(mq_unlink(twoslash), EACCES);

    mqt_unlink(slashed);
}

/* A name of 255 characters after the slash works; 256 is ENAMETOOLONG. */
static void test_name_length(void)
{
    char name[MQT_NAME_LEN], longer[MQT_NAME_LEN];
    struct mq_attr a = attr_of(2, 16);
    mqd_t q;
    int n;

    n = snprintf(name, sizeof name, "/mqtest-%ld-len-", (long)getpid());
    memset(name + n, 'x', (size_t)(256 - n));
    name[256] = '\0'; /* "/" + 255 characters */
    CHECK_EQ(strlen(name), 256);
    memcpy(longer, name, 256);
    longer[256] = 'x';
    longer[257] = '\0'; /* "/" + 256 characters */
    mqt_track_name(name);
    mqt_track_name(longer);

    CHECK_OK(q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a));
    CHECK_OK(mq_send(q, "m", 1, 0));
    CHECK_OK(mq_close(q));
    CHECK_OK(q = mq_open(name, O_RDONLY));
    CHECK_OK(mq_close(q));
    CHECK_OK(mq_unlink(name));

    CHECK_ERR(mq_open(longer, O_CREAT | O_EXCL | O_RDWR, 0600, &a),
              ENAMETOOLONG);
    CHECK_ERR(mq_open(longer, O_RDWR), ENAMETOOLONG);
    CHECK_ERR(mq_unlink(longer), ENAMETOOLONG);

    mqt_unlink(name);
    mqt_unlink(longer);
}

/* O_WRONLY|O_RDWR is not an access mode: EINVAL for an existing queue. */
static void test_bad_access_mode(void)
{
    char name[MQT_NAME_LEN];
    struct mq_attr a = attr_of(2, 16);
    mqd_t q = mqt_create(name, "accmode", O_RDWR, 2, 16);

    CHECK_ERR(mq_open(name, O_WRONLY | O_RDWR), EINVAL);
    CHECK_ERR(mq_open(name, O_WRONLY | O_RDWR | O_NONBLOCK), EINVAL);
    CHECK_ERR(mq_open(name, O_CREAT | O_WRONLY | O_RDWR, 0600, &a), EINVAL);
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* attr == NULL gives implementation-defined but usable defaults. */
static void test_default_attr(void)
{
    char name[MQT_NAME_LEN];
    struct mq_attr got;
    char *buf;
    mqd_t q;

    CHECK_OK(q = mq_open(mqt_name(name, "defaults"),
                         O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, NULL));
    if (q == (mqd_t)-1)
        return;
    CHECK_OK(mq_getattr(q, &got));
    CHECK(got.mq_maxmsg > 0);
    CHECK(got.mq_msgsize > 0);
    CHECK_EQ(got.mq_curmsgs, 0);
    CHECK_EQ(got.mq_flags, O_NONBLOCK);

    if (got.mq_msgsize > 0 && got.mq_msgsize <= (1L << 20) &&
        (buf = calloc(1, (size_t)got.mq_msgsize + 1)) != NULL) {
        size_t size = (size_t)got.mq_msgsize;
        memset(buf, 'd', size);
        CHECK_ERR(mq_send(q, buf, size + 1, 0), EMSGSIZE);
        CHECK_OK(mq_send(q, buf, size, 0));
        memset(buf, 0, size);
        CHECK_EQ(mq_receive(q, buf, size, NULL), (long long)size);
        CHECK(buf[0] == 'd' && buf[size - 1] == 'd');
        free(buf);
    } else {
        SKIP("default msgsize %ld too large to exercise", got.mq_msgsize);
    }

    /* The queue really holds mq_maxmsg messages, and no more. */
    if (got.mq_maxmsg <= 1024) {
        long i;
        for (i = 0; i < got.mq_maxmsg; i++)
            if (!CHECK_OK(mq_send(q, "f", 1, 0)))
                break;
        CHECK_ERR(mq_send(q, "f", 1, 0), EAGAIN);
        CHECK_OK(mq_getattr(q, &got));
        CHECK_EQ(got.mq_curmsgs, got.mq_maxmsg);
    } else {
        SKIP("default maxmsg %ld too large to fill", got.mq_maxmsg);
    }
    CHECK_OK(mq_close(q));
    mqt_unlink(name);
}

/* ---- permissions -------------------------------------------------------- */

/* Become UNPRIVILEGED_ID (in a child).  Returns 0 on success. */
static int drop_privileges(void)
{
    if (setgroups(0, NULL) == -1 || setgid(UNPRIVILEGED_ID) == -1 ||
        setuid(UNPRIVILEGED_ID) == -1)
        return -1;
    return geteuid() == UNPRIVILEGED_ID && getegid() == UNPRIVILEGED_ID ? 0
                                                                         : -1;
}

/* The owner of a queue is bound by its owner bits; mode is masked by the
 * umask; the creating open gets the access it asked for whatever the mode.
 * Runs as a non-root user: in a child that drops privileges if we are
 * root, else in a child as ourselves. */
static void test_owner_permissions_and_umask(void)
{
    char q640[MQT_NAME_LEN], q400[MQT_NAME_LEN], qmask[MQT_NAME_LEN];
    pid_t pid;

    mqt_name(q640, "mode640");
    mqt_name(q400, "mode400");
    mqt_name(qmask, "umask277");

    pid = mqt_fork();
    if (pid == 0) {
        struct mq_attr a = attr_of(2, 16);
        char buf[16];
        mqd_t q, q2;

        if (geteuid() == 0 && drop_privileges() == -1)
            _exit(77);

        /* 0640 under umask 022: the owner can open it read-write. */
        umask(022);
        CHECK_OK(q = mq_open(q640, O_CREAT | O_EXCL | O_RDWR, 0640, &a));
        CHECK_OK(q2 = mq_open(q640, O_RDWR));
        CHECK_OK(mq_send(q2, "o", 1, 0));
        CHECK_EQ(mq_receive(q, buf, sizeof buf, NULL), 1);
        CHECK_OK(mq_close(q2));
        CHECK_OK(mq_close(q));
        CHECK_OK(mq_unlink(q640));

        /* 0400: the creator still gets O_RDWR from the creating open, but
         * a later open for writing is refused, even to the owner. */
        umask(0);
        CHECK_OK(q = mq_open(q400, O_CREAT | O_EXCL | O_RDWR, 0400, &a));
        CHECK_OK(mq_send(q, "c", 1, 0));
        CHECK_ERR(mq_open(q400, O_WRONLY), EACCES);
        CHECK_ERR(mq_open(q400, O_RDWR), EACCES);
        CHECK_ERR(mq_open(q400, O_CREAT | O_WRONLY, 0600, &a), EACCES);
        CHECK_OK(q2 = mq_open(q400, O_RDONLY));
        CHECK_EQ(mq_receive(q2, buf, sizeof buf, NULL), 1);
        CHECK_OK(mq_close(q2));
        CHECK_OK(mq_close(q));
        CHECK_OK(mq_unlink(q400));

        /* The umask is applied: 0666 & ~0277 == 0400. */
        umask(0277);
        CHECK_OK(q = mq_open(qmask, O_CREAT | O_EXCL | O_RDWR, 0666, &a));
        CHECK_ERR(mq_open(qmask, O_WRONLY), EACCES);
        CHECK_OK(q2 = mq_open(qmask, O_RDONLY));
        CHECK_OK(mq_close(q2));
        CHECK_OK(mq_close(q));
        CHECK_OK(mq_unlink(qmask));
        mqt_child_exit();
    }
    {
        int st = mqt_wait_child(pid, 10000);
        if (st == 77)
            SKIP("cannot switch to uid %d: owner permission checks not run",
                 UNPRIVILEGED_ID);
        else
            CHECK_EQ(st, 0);
    }
    mqt_unlink(q640);
    mqt_unlink(q400);
    mqt_unlink(qmask);
}

/* Another user is bound by the group/other bits (after the umask). */
static void test_other_user_permissions(void)
{
    char q600[MQT_NAME_LEN], q644[MQT_NAME_LEN], q622[MQT_NAME_LEN];
    struct mq_attr a = attr_of(2, 16);
    mqd_t m600, m644, m622;
    mode_t old;
    pid_t pid;
    char buf[16];

    if (geteuid() != 0) {
        SKIP("*** not root: cannot test access by another user (EACCES for "
             "0600 and for writing a read-only queue) ***");
        return;
    }

    old = umask(022);
    m600 = mqt_create(q600, "other600", O_RDWR, 2, 16);
    mqt_name(q644, "other644");
    CHECK_OK(m644 = mq_open(q644, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK,
                            0666, &a));
    umask(0);
    mqt_name(q622, "other622");
    CHECK_OK(m622 = mq_open(q622, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK,
                            0622, &a));
    umask(old);
    CHECK_OK(mq_send(m644, "r", 1, 5));

    pid = mqt_fork();
    if (pid == 0) {
        mqd_t q;
        unsigned prio = 0;

        if (drop_privileges() == -1)
            _exit(77);
        /* 0600: no access at all for others. */
        CHECK_ERR(mq_open(q600, O_RDONLY), EACCES);
        CHECK_ERR(mq_open(q600, O_WRONLY), EACCES);
        CHECK_ERR(mq_open(q600, O_RDWR), EACCES);
        CHECK_ERR(mq_open(q600, O_CREAT | O_RDWR, 0666, &a), EACCES);

        /* 0666 & ~022: others may read but not write. */
        CHECK_ERR(mq_open(q644, O_WRONLY), EACCES);
        CHECK_ERR(mq_open(q644, O_RDWR), EACCES);
        CHECK_OK(q = mq_open(q644, O_RDONLY));
        CHECK_EQ(mq_receive(q, buf, sizeof buf, &prio), 1);
        CHECK_EQ(prio, 5);
        CHECK_OK(mq_close(q));

        /* 0622 (created under umask 0): others may write but not read. */
        CHECK_ERR(mq_open(q622, O_RDONLY), EACCES);
        CHECK_ERR(mq_open(q622, O_RDWR), EACCES);
        CHECK_OK(q = mq_open(q622, O_WRONLY));
        CHECK_OK(mq_send(q, "w", 1, 6));
        CHECK_OK(mq_close(q));
        mqt_child_exit();
    }
    {
        int st = mqt_wait_child(pid, 10000);
        unsigned prio = 0;
        if (st == 77) {
            SKIP("*** cannot switch to uid %d: other-user permission checks "
                 "not run ***", UNPRIVILEGED_ID);
        } else {
            CHECK_EQ(st, 0);
            /* The other user's send arrived; its receive took the message. */
            CHECK_EQ(mq_receive(m622, buf, sizeof buf, &prio), 1);
            CHECK_EQ(prio, 6);
            CHECK_OK(mq_getattr(m644, &a));
            CHECK_EQ(a.mq_curmsgs, 0);
        }
    }
    CHECK_OK(mq_close(m600));
    CHECK_OK(mq_close(m644));
    CHECK_OK(mq_close(m622));
    mqt_unlink(q600);
    mqt_unlink(q644);
    mqt_unlink(q622);
}

/* ---- mq_unlink ---------------------------------------------------------- */

static void test_unlink_missing_enoent(void)
{
    char name[MQT_NAME_LEN];
    mqd_t q;

    mqt_name(name, "unlink-missing");
    CHECK_ERR(mq_unlink(name), ENOENT);
    q = mqt_create(name, "unlink-twice", O_RDWR, 2, 16);
    CHECK_OK(mq_close(q));
    CHECK_OK(mq_unlink(name));
    CHECK_ERR(mq_unlink(name), ENOENT);
    mqt_unlink(name);
}

/* Unlink removes the name at once; open descriptors keep working on the
 * old queue; the name can then be used for a new, empty queue. */
static void test_unlink_while_open(void)
{
    char name[MQT_NAME_LEN], buf[64];
    struct mq_attr a = attr_of(3, 32), got;
    mqd_t old, old2, fresh;
    unsigned prio = 0;

    old = mqt_create(name, "unlink-open", O_RDWR | O_NONBLOCK, 4, 64);
    CHECK_OK(old2 = mq_open(name, O_RDONLY | O_NONBLOCK));
    CHECK_OK(mq_send(old, "first", 5, 1));
    CHECK_OK(mq_send(old, "second", 6, 2));

    CHECK_OK(mq_unlink(name));
    CHECK_ERR(mq_open(name, O_RDWR), ENOENT);
    CHECK_ERR(mq_unlink(name), ENOENT);

    /* The open descriptors still reach the old queue. */
    CHECK_OK(mq_getattr(old, &got));
    CHECK_EQ(got.mq_curmsgs, 2);
    CHECK_EQ(mq_receive(old2, buf, sizeof buf, &prio), 6);
    CHECK(memcmp(buf, "second", 6) == 0);
    CHECK_EQ(prio, 2);

    /* A new queue under the same name is a different, empty queue. */
    CHECK_OK(fresh = mq_open(name, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK,
                             0600, &a));
    CHECK_OK(mq_getattr(fresh, &got));
    CHECK_EQ(got.mq_maxmsg, 3);
    CHECK_EQ(got.mq_msgsize, 32);
    CHECK_EQ(got.mq_curmsgs, 0);
    CHECK_ERR(mq_receive(fresh, buf, sizeof buf, NULL), EAGAIN);

    CHECK_OK(mq_send(fresh, "new", 3, 0));
    CHECK_OK(mq_send(old, "third", 5, 0));
    CHECK_OK(mq_getattr(old, &got));
    CHECK_EQ(got.mq_maxmsg, 4);
    CHECK_EQ(got.mq_msgsize, 64);
    CHECK_EQ(got.mq_curmsgs, 2);
    CHECK_EQ(mq_receive(old, buf, sizeof buf, NULL), 5);
    CHECK(memcmp(buf, "first", 5) == 0);
    CHECK_EQ(mq_receive(old2, buf, sizeof buf, NULL), 5);
    CHECK(memcmp(buf, "third", 5) == 0);
    CHECK_ERR(mq_receive(old, buf, sizeof buf, NULL), EAGAIN);
    CHECK_EQ(mq_receive(fresh, buf, sizeof buf, NULL), 3);
    CHECK(memcmp(buf, "new", 3) == 0);

    /* Closing the old descriptors does not touch the new queue. */
    CHECK_OK(mq_send(fresh, "still", 5, 0));
    CHECK_OK(mq_close(old));
    CHECK_OK(mq_close(old2));
    CHECK_OK(mq_getattr(fresh, &got));
    CHECK_EQ(got.mq_curmsgs, 1);
    CHECK_OK(mq_close(fresh));
    mqt_unlink(name);
}

/* ---- mq_close ----------------------------------------------------------- */

static void test_close_ebadf(void)
{
    char name[MQT_NAME_LEN], buf[16];
    struct mq_attr got;
    mqd_t q;

    CHECK_ERR(mq_close((mqd_t)-1), EBADF);
    q = mqt_create(name, "close", O_RDWR, 2, 16);
    CHECK_OK(mq_close(q));
    CHECK_ERR(mq_close(q), EBADF);
    CHECK_ERR(mq_send(q, "x", 1, 0), EBADF);
    CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EBADF);
    CHECK_ERR(mq_getattr(q, &got), EBADF);
    mqt_unlink(name);
}

int main(void)
{
    mqt_init("open_unlink");
    MQT_RUN(test_create_and_open_existing);
    MQT_RUN(test_creat_existing_ignores_attr);
    MQT_RUN(test_excl_eexist);
    MQT_RUN(test_open_missing_enoent);
    MQT_RUN(test_bad_attr_einval);
    MQT_RUN(test_bad_names);
    MQT_RUN(test_name_length);
    MQT_RUN(test_bad_access_mode);
    MQT_RUN(test_default_attr);
    MQT_RUN(test_owner_permissions_and_umask);
    MQT_RUN(test_other_user_permissions);
    MQT_RUN(test_unlink_missing_enoent);
    MQT_RUN(test_unlink_while_open);
    MQT_RUN(test_close_ebadf);
    return mqt_finish();
}
