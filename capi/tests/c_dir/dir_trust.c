/*
 * dir_trust.c - shmq only: the queue directory (SHMQ_DIR) is used only if
 * nobody but root and the caller could have prepared it.  mq_open and
 * mq_unlink fail with EACCES in a directory writable by everyone without
 * the sticky bit, in one owned by another uid and in a symbolic link; with
 * ENOENT in a missing one; with EINVAL for a relative SHMQ_DIR.
 *
 * Run with SHMQ_DIR set to a directory holding the subdirectories "open"
 * (root's, 0777), "owned" (uid 65534's), "link" (a symbolic link to
 * "good") and "good" (root's, 0755), and no "missing".  Built with the
 * compatibility header or run unmodified under the drop-in.
 */
#include <mqueue.h>
#ifdef SHMQ_COMPAT
#include "shmq_compat.h"
#endif
#include "mqtest.h"

#include <stdlib.h>

static char base[2048];

static void use_dir(const char *sub)
{
    char d[4096];
    snprintf(d, sizeof d, "%s/%s", base, sub);
    setenv("SHMQ_DIR", d, 1);
}

static void test_untrusted_directories(void)
{
    static const char *const untrusted[] = { "open", "owned", "link" };
    struct mq_attr a;
    memset(&a, 0, sizeof a);
    a.mq_maxmsg = 2;
    a.mq_msgsize = 8;
    for (size_t i = 0; i < sizeof untrusted / sizeof untrusted[0]; i++) {
        use_dir(untrusted[i]);
        printf("# SHMQ_DIR=%s\n", getenv("SHMQ_DIR"));
        CHECK_ERR(mq_open("/dirq", O_CREAT | O_RDWR, 0600, &a), EACCES);
        CHECK_ERR(mq_open("/dirq", O_RDONLY), EACCES);
        CHECK_ERR(mq_unlink("/dirq"), EACCES);
    }
}

static void test_missing_and_relative(void)
{
    use_dir("missing");
    CHECK_ERR(mq_open("/dirq", O_RDWR), ENOENT);
    CHECK_ERR(mq_unlink("/dirq"), ENOENT);
    setenv("SHMQ_DIR", "relative/dir", 1);
    CHECK_ERR(mq_open("/dirq", O_RDWR), EINVAL);
}

static void test_trusted_directory(void)
{
    struct mq_attr a;
    memset(&a, 0, sizeof a);
    a.mq_maxmsg = 2;
    a.mq_msgsize = 8;
    use_dir("good");
    mqd_t q = mq_open("/dirq", O_CREAT | O_EXCL | O_RDWR, 0600, &a);
    CHECK(q != (mqd_t)-1);
    if (q != (mqd_t)-1)
        CHECK_OK(mq_close(q));
    CHECK_OK(mq_unlink("/dirq"));
}

int main(void)
{
    mqt_init("dir_trust");
    const char *b = getenv("SHMQ_DIR");
    if (b == NULL || strlen(b) >= sizeof base) {
        printf("SHMQ_DIR must be set\n0 passed, 1 failed\n");
        return 1;
    }
    strcpy(base, b);
    MQT_RUN(test_untrusted_directories);
    MQT_RUN(test_missing_and_relative);
    MQT_RUN(test_trusted_directory);
    setenv("SHMQ_DIR", base, 1);
    return mqt_finish();
}
