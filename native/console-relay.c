/*
 * console-relay: give a process started by an OCI runtime a real terminal, from Node.
 *
 *   console-relay SOCKET -- RUNTIME ARGS...
 *
 * crun (like runc) hands the pseudo-terminal master of `exec --tty` or `run --tty` to the
 * caller over a unix socket (--console-socket) as an SCM_RIGHTS message. Node cannot
 * receive file descriptors, so this helper does: it listens on SOCKET, runs RUNTIME ARGS
 * (which must include --console-socket SOCKET), receives the master, and relays
 *
 *   stdin  -> master          (the terminal's input)
 *   master -> stdout          (the terminal's output; stdout and stderr are one stream)
 *   fd 3   -> TIOCSWINSZ      (lines "COLUMNS ROWS\n"; optional, ignored when fd 3 is closed)
 *
 * until the runtime exits and the master reaches EOF. Exit status: the runtime's (for a
 * foreground `crun exec --tty`, the process's exit code), 128+N for signal N. A failure of
 * the helper itself is one JSON line on stderr and exit status 125.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>

#include "common.h"

#define EXIT_HELPER_FAILED 125
#define RESIZE_FD 3

static int listen_socket(const char *path) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof(addr.sun_path)) FAIL_KIND("usage", "socket path too long: %s", path);
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) FAIL_SYS("socket");
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 1) < 0) {
    set_error("system", errno, "listen on %s", path);
    close(fd);
    return -1;
  }
  return fd;
}

/* Receives one file descriptor sent with SCM_RIGHTS on the connection `conn`. */
static int receive_fd(int conn) {
  char byte;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                       .msg_controllen = sizeof(control.buf)};
  ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) FAIL_SYS("receiving the terminal from the runtime");
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  if (cmsg == NULL || cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
      cmsg->cmsg_len != CMSG_LEN(sizeof(int)))
    FAIL_KIND("system", "the runtime connected to the console socket but sent no terminal");
  int fd;
  memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
  return fd;
}

/* Applies every complete "COLUMNS ROWS" line buffered from the resize fd. */
static void apply_resizes(int master, char *buf, size_t *len) {
  char *start = buf, *nl;
  while ((nl = memchr(start, '\n', (size_t)(buf + *len - start))) != NULL) {
    *nl = '\0';
    unsigned cols = 0, rows = 0;
    if (sscanf(start, "%u %u", &cols, &rows) == 2 && cols > 0 && rows > 0 && cols < 65536 &&
        rows < 65536) {
      struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
      ioctl(master, TIOCSWINSZ, &ws);
    }
    start = nl + 1;
  }
  *len = (size_t)(buf + *len - start);
  memmove(buf, start, *len);
  if (*len >= 64) *len = 0; /* a line that long is garbage: drop it */
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

/* Relays until the terminal's output ends (EIO once every slave fd is closed). */
static void relay(int master) {
  char buf[32768], resize_buf[128];
  size_t resize_len = 0;
  bool stdin_open = true, resize_open = fcntl(RESIZE_FD, F_GETFD) >= 0;
  for (;;) {
    struct pollfd fds[3] = {{.fd = master, .events = POLLIN},
                            {.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN},
                            {.fd = resize_open ? RESIZE_FD : -1, .events = POLLIN}};
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(master, buf, sizeof(buf));
      if (n <= 0 && !(n < 0 && errno == EINTR)) return;
      if (n > 0 && write_all(STDOUT_FILENO, buf, (size_t)n) < 0) return;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
      if (n <= 0) stdin_open = false; /* the process keeps its terminal; only input ends */
      else if (write_all(master, buf, (size_t)n) < 0) stdin_open = false;
    }
    if (fds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(RESIZE_FD, resize_buf + resize_len, sizeof(resize_buf) - resize_len);
      if (n <= 0) resize_open = false;
      else {
        resize_len += (size_t)n;
        apply_resizes(master, resize_buf, &resize_len);
      }
    }
  }
}

static int run(const char *socket_path, char **argv, int *status) {
  _cleanup_fd_ int listener = listen_socket(socket_path);
  if (listener < 0) return -1;
  pid_t child = fork();
  if (child < 0) FAIL_SYS("fork");
  if (child == 0) {
    /* The runtime's own stdio carries only its error messages: keep stderr, close stdin
     * so it cannot steal the terminal's input, and send stdout to stderr. */
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) dup2(null, STDIN_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    close(RESIZE_FD);
    execvp(argv[0], argv);
    fprintf(stderr, "console-relay: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  /* Wait for the runtime to connect, or to exit without doing so. */
  for (;;) {
    struct pollfd pfd = {.fd = listener, .events = POLLIN};
    int ready = poll(&pfd, 1, 100);
    if (ready > 0) break;
    if (waitpid(child, status, WNOHANG) == child) {
      unlink(socket_path);
      return 0; /* it failed before creating a terminal; its status says why */
    }
  }
  _cleanup_fd_ int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  unlink(socket_path);
  if (conn < 0) FAIL_SYS("accept on the console socket");
  _cleanup_fd_ int master = receive_fd(conn);
  if (master < 0) return -1;
  relay(master);
  while (waitpid(child, status, 0) < 0)
    if (errno != EINTR) FAIL_SYS("waiting for the runtime");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: console-relay SOCKET -- RUNTIME ARGS...\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int status = 0;
  if (run(argv[1], argv + 3, &status) < 0) {
    report_failure(stderr);
    return EXIT_HELPER_FAILED;
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}
