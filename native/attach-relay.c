/*
 * attach-relay SOCKET [--no-stdin]
 *
 * Attaches to a running container through conmon's attach socket and relays it to pipes
 * Node can use. The socket is AF_UNIX SOCK_SEQPACKET, which Node cannot open. Protocol
 * (conmon 2.x):
 *
 *   conmon -> us   one message per read of the container's output; its first byte says
 *                  which stream (2 stdout, 3 stderr), the rest is the data
 *   us -> conmon   raw stdin bytes, one message each (conmon reads at most 32767 per message)
 *   shutdown(SHUT_WR) / close   the attacher is done with stdin; conmon closes the
 *                  container's stdin unless it runs with --leave-stdin-open (stdin_once)
 *   EOF from conmon  the container exited (conmon closes every attacher)
 *
 * Relayed as: stdout data -> fd 1, stderr data -> fd 3, fd 0 -> stdin messages. With
 * --no-stdin fd 0 is never read and stdin is never shut down, so an attacher that did not
 * ask for stdin cannot close a stdin_once container's stdin while it stays attached.
 *
 * stderr carries exactly one JSON line: {"ok":true} once connected, or
 * {"ok":false,"kind":...,"errno":...,"error":...} and exit 1 (2 for a usage error).
 * Exit 0 once conmon has closed the socket and everything received was written out.
 */
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common.h"

#define STDERR_OUT_FD 3
#define PIPE_STDOUT 2
#define PIPE_STDERR 3
/* conmon receives into a 32768-byte buffer and keeps one byte spare; longer messages are cut. */
#define MAX_STDIN_MESSAGE 32767

/* Connects to a SOCK_SEQPACKET socket at `path` of any length, through its directory's fd. */
static int connect_attach_socket(const char *path) {
  _cleanup_free_ char *dir_copy = strdup(path);
  _cleanup_free_ char *base_copy = strdup(path);
  if (dir_copy == NULL || base_copy == NULL) FAIL_SYS("strdup");
  _cleanup_fd_ int dir = open(dirname(dir_copy), O_PATH | O_DIRECTORY | O_CLOEXEC);
  /* A missing directory is the same answer as a refused connect: no monitor there (any more). */
  if (dir < 0) {
    set_error("connect", errno, "open the directory of %s", path);
    return -1;
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  int n = snprintf(addr.sun_path, sizeof(addr.sun_path), "/proc/self/fd/%d/%s", dir, basename(base_copy));
  if (n < 0 || (size_t)n >= sizeof(addr.sun_path)) FAIL_KIND("usage", "socket name too long: %s", path);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) FAIL_SYS("socket");
  if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
    set_error("connect", errno, "connect to %s", path);
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/*
 * Relays until conmon closes the socket. Output is written with blocking writes: a slow
 * reader slows this attacher only (conmon writes to each attacher in turn), and what
 * conmon sent is never dropped while our reader is alive.
 */
static int relay(int sock, bool want_stdin) {
  /* One byte more than conmon's largest message, so a cut message is visible. */
  char buf[8192 + 2];
  char in[MAX_STDIN_MESSAGE];
  bool stdout_open = true, stderr_open = true, stdin_open = want_stdin;
  for (;;) {
    struct pollfd fds[2] = {{.fd = sock, .events = POLLIN},
                            {.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      FAIL_SYS("poll");
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(sock, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0; /* the container exited (or conmon went away) */
      int out = buf[0] == PIPE_STDOUT ? STDOUT_FILENO : buf[0] == PIPE_STDERR ? STDERR_OUT_FD : -1;
      bool *open_flag = out == STDOUT_FILENO ? &stdout_open : &stderr_open;
      /* A reader that went away (or was never given) just stops getting data. */
      if (out >= 0 && *open_flag && write_all(out, buf + 1, (size_t)n - 1) < 0) *open_flag = false;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(STDIN_FILENO, in, sizeof(in));
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) {
        if (send(sock, in, (size_t)n, MSG_NOSIGNAL) < 0) stdin_open = false;
      } else {
        stdin_open = false;
        shutdown(sock, SHUT_WR);
      }
    }
  }
}

int main(int argc, char **argv) {
  bool want_stdin = true;
  if (argc == 3 && strcmp(argv[2], "--no-stdin") == 0)
    want_stdin = false;
  else if (argc != 2) {
    fputs("{\"ok\":false,\"kind\":\"usage\",\"error\":\"usage: attach-relay SOCKET [--no-stdin]\"}\n",
          stderr);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  /* Without fd 3 stderr data is dropped rather than written to whatever fd 3 becomes. */
  if (fcntl(STDERR_OUT_FD, F_GETFD) < 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0 && null != STDERR_OUT_FD) {
      dup2(null, STDERR_OUT_FD);
      close(null);
    }
  }
  int sock = connect_attach_socket(argv[1]);
  if (sock < 0) {
    report_failure(stderr);
    return 1;
  }
  fputs("{\"ok\":true}\n", stderr);
  fflush(stderr);
  int rc = relay(sock, want_stdin);
  close(sock);
  if (rc < 0) {
    report_failure(stderr);
    return 1;
  }
  return 0;
}
