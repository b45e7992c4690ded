/*
 * spawn-in-cgroup: start a program inside a cgroup v2 directory without migrating a process.
 *
 *   spawn-in-cgroup CGROUP_DIR PROGRAM [ARGS...]
 *
 * Why a helper: writing a pid to cgroup.procs takes the kernel's cgroup threadgroup lock for
 * writing, which waits for an RCU grace period when no migration happened just before: about
 * 10 ms on the build machines, more than the rest of CreateContainer's own work. clone3 with
 * CLONE_INTO_CGROUP starts the child in the cgroup instead (no migration, no grace period).
 * Node cannot pass that flag, so this helper does: the child execs PROGRAM in CGROUP_DIR, and
 * the helper waits for it and exits as it did (exit status, or 128 + the signal), so the
 * caller sees one process that ends when PROGRAM ends. Every fd but stdio is closed in the
 * helper after the clone, so the child alone holds the caller's extra pipes.
 *
 * Where clone3 or CLONE_INTO_CGROUP is not available (ENOSYS, E2BIG, EINVAL on older
 * kernels), the helper moves itself into the cgroup and execs PROGRAM (the migration it was
 * meant to avoid, but the same result). On an error it says why on stderr and exits 127.
 */
/* common.h's JSON report is not used: the caller reads PROGRAM's own output and status. */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, const char *name) {
  fprintf(stderr, "spawn-in-cgroup: %s %s: %s\n", what, name, strerror(errno));
  _exit(127);
}

static void migrate_self(const char *dir) {
  char path[4096];
  char pid[32];
  if (snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= (int)sizeof(path)) {
    errno = ENAMETOOLONG;
    die("cannot open", dir);
  }
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("cannot open", path);
  int n = snprintf(pid, sizeof(pid), "%d", (int)getpid());
  if (write(fd, pid, (size_t)n) != n) die("cannot write to", path);
  close(fd);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: spawn-in-cgroup CGROUP_DIR PROGRAM [ARGS...]\n");
    return 127;
  }
  const char *dir = argv[1];
  int cgroup = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cgroup < 0) die("cannot open cgroup", dir);

  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.flags = CLONE_INTO_CGROUP;
  args.exit_signal = SIGCHLD;
  args.cgroup = (uint64_t)cgroup;
  long child = syscall(SYS_clone3, &args, sizeof(args));
  if (child < 0) {
    if (errno != ENOSYS && errno != E2BIG && errno != EINVAL) die("cannot start a process in", dir);
    migrate_self(dir);
    execvp(argv[2], argv + 2);
    die("cannot run", argv[2]);
  }
  if (child == 0) {
    execvp(argv[2], argv + 2);
    die("cannot run", argv[2]);
  }

  /* The child alone keeps the caller's pipes: their ends close when it is done with them. */
  for (int fd = 3; fd < 1024; fd++) close(fd);
  int status;
  while (waitpid((pid_t)child, &status, 0) < 0) {
    if (errno != EINTR) return 127;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}
