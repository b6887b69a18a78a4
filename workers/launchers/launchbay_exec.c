/* launchbay-exec: what a process job's step needs between fork and exec, in C.
 *
 * The process launcher (workers/launchers/process.py) used to do these steps in a Python
 * preexec_fn. A preexec_fn makes subprocess fork the whole worker (tens of MB of page
 * tables, copied on write while the child runs Python) instead of vfork: 10-20 ms per step
 * on a 70 MB worker against ~1 ms. Started through this helper, subprocess can vfork, and
 * the helper does the same steps, in the same order, before it execs the step's program:
 *
 *   1. become a child subreaper (orphans of the job come to the step's process);
 *   2. mark itself (oom_score_adj, inherited by everything the job starts; set while
 *      still root, so an unprivileged job cannot lower it);
 *   3. take the job's identity (no supplementary groups, gid, uid), if one is given;
 *   4. ask for SIGKILL when the worker dies (after 3: a change of identity clears it),
 *      and exit 137 if the worker died already.
 *
 * Usage: launchbay-exec ERRFD MARK UID GID PPID -- PROGRAM [ARGS...]
 *   ERRFD  a pipe's write end: on a failure, the helper writes "<step> <errno>\n" to it
 *          and exits 127; a successful exec closes it (close-on-exec), so the launcher
 *          reads end-of-file. "-1": none.
 *   MARK   written to /proc/self/oom_score_adj ("-": none).
 *   UID    GID   the job's identity ("-": keep the worker's).
 *   PPID   the worker's pid for the parent-death signal ("0": none).
 * PROGRAM is looked up on the PATH of the environment it is given, as execvp does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int errfd = -1;

static void fail(const char *step, int err) {
    if (errfd >= 0) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%s %d\n", step, err);
        if (n > 0 && write(errfd, buf, (size_t)n) < 0) {
            /* nothing more to say: the exit code says it */
        }
    }
    _exit(127);
}

static long number(const char *s, const char *what) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0') fail(what, EINVAL);
    return v;
}

int main(int argc, char **argv) {
    if (argc < 8 || strcmp(argv[6], "--") != 0) {
        fprintf(stderr, "usage: launchbay-exec ERRFD MARK UID GID PPID -- PROGRAM [ARGS...]\n");
        return 127;
    }
    errfd = (int)number(argv[1], "errfd");
    if (errfd >= 0 && fcntl(errfd, F_SETFD, FD_CLOEXEC) < 0) fail("errfd", errno);

    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) fail("subreaper", errno);

    if (strcmp(argv[2], "-") != 0) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) { /* (no /proc: unmarked, as the Python path left it) */
            size_t len = strlen(argv[2]);
            if (write(fd, argv[2], len) != (ssize_t)len) { /* as above: best effort */
            }
            close(fd);
        }
    }

    if (strcmp(argv[3], "-") != 0 || strcmp(argv[4], "-") != 0) {
        if (setgroups(0, NULL) < 0) fail("setgroups", errno);
        if (strcmp(argv[4], "-") != 0 && setgid((gid_t)number(argv[4], "gid")) < 0)
            fail("setgid", errno);
        if (strcmp(argv[3], "-") != 0 && setuid((uid_t)number(argv[3], "uid")) < 0)
            fail("setuid", errno);
    }

    long parent = number(argv[5], "ppid");
    if (parent > 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) fail("pdeathsig", errno);
        if (getppid() != (pid_t)parent) _exit(137); /* the worker died before prctl */
    }

    execvp(argv[7], &argv[7]);
    fail("exec", errno);
    return 127;
}
