/*
 * node-supervisor: what stays on the host side of a rootless node while its daemon runs.
 *
 *   node-supervisor --run-dir DIR --dial-socket PATH --rootlesskit-pid PID --child-pid PID
 *                   --slirp4netns PATH --mtu N [--disable-host-loopback] -- COMMAND [ARGS...]
 *
 * `rootless-cri serve` finds or starts the node in Node.js, then replaces itself with this
 * program (same pid: supervisor.pid stays true), so a node costs one Node.js process, not two.
 * COMMAND is nsenter into the node running the daemon. This program:
 *
 *  - starts COMMAND with a Node.js IPC channel on its fd 3 (NODE_CHANNEL_FD=3, JSON lines)
 *    and answers the daemon's host listener requests on it: it binds the host's address and
 *    hands the listening socket over with SCM_RIGHTS, in the message shape Node.js gives a
 *    net.Server sent by child.send() (see src/rootless/host-listeners.ts for why the daemon
 *    holds its host listeners itself). One handle is in flight at a time: the next waits for
 *    the daemon's NODE_HANDLE_ACK, as Node.js's own sender does.
 *  - connects to the host for the daemon (registries) when it asks on the channel, and hands
 *    the connected socket over the same way (a net.Socket message); no process copies a pull.
 *  - serves the host dialer on DIAL_SOCKET (src/os/host-dialer.ts has the protocol) for host
 *    names, which the channel does not take: each connection is a forked child that resolves
 *    and connects from the host's network namespace and copies bytes both ways.
 *  - watches rootlesskit's slirp4netns every 3 s and starts a replacement when it is gone
 *    (src/rootless/uplink.ts has the reasons); the replacement's --exit-fd is held here, so it
 *    never outlives this process.
 *  - forwards SIGTERM, SIGINT and SIGHUP to the daemon, writes its pid to
 *    DIR/rootless-cri.pid, and exits as COMMAND did (its status, or 128 + its signal).
 *
 * Logs are JSON lines on stderr, in the daemon's (pino's) shape.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

#define UPLINK_INTERVAL_MS 3000
#define DIAL_HANDSHAKE_MS 10000
#define DIAL_MAX_REQUEST 512
#define DIAL_MAX_CHILDREN 256
#define IPC_BUFFER 65536
#define MAX_QUEUED_HANDLES 64

struct options {
  const char *run_dir;
  const char *dial_socket;
  pid_t rootlesskit_pid;
  pid_t child_pid;
  const char *slirp4netns;
  int mtu;
  bool disable_host_loopback;
  char **command;
};

static const char *g_name = "supervisor";

static long long now_ms(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One pino-shaped line: level (30 info, 40 warn, 50 error), msg, and `extra` JSON members. */
__attribute__((format(printf, 3, 4))) static void log_line(int level, const char *msg,
                                                          const char *extra_fmt, ...) {
  fprintf(stderr, "{\"level\":%d,\"time\":%lld,\"pid\":%d,\"name\":", level,
          now_ms(CLOCK_REALTIME), (int)getpid());
  json_string(stderr, g_name);
  if (extra_fmt != NULL && extra_fmt[0] != '\0') {
    va_list ap;
    va_start(ap, extra_fmt);
    fputc(',', stderr);
    vfprintf(stderr, extra_fmt, ap);
    va_end(ap);
  }
  fputs(",\"msg\":", stderr);
  json_string(stderr, msg);
  fputs("}\n", stderr);
  fflush(stderr);
}

static const char *errno_name(int errnum) {
  const char *name = strerrorname_np(errnum);
  return name != NULL ? name : "EIO";
}

/* What a child runs with: no blocked signals, SIGPIPE back to its default. */
static void reset_signals_for_exec(void) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
}

static bool parse_pid(const char *text, pid_t *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < 1 || v > INT32_MAX) return false;
  *out = (pid_t)v;
  return true;
}

static ssize_t read_small_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = '\0';
  return n;
}

/* ---- the daemon's pid file ---------------------------------------------------------------- */

static int write_pid_file(const char *run_dir, pid_t pid) {
  char file[4096], tmp[4200], text[32];
  if (snprintf(file, sizeof(file), "%s/rootless-cri.pid", run_dir) >= (int)sizeof(file)) return -1;
  snprintf(tmp, sizeof(tmp), "%s.%d.tmp", file, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return -1;
  int n = snprintf(text, sizeof(text), "%d\n", (int)pid);
  bool ok = write(fd, text, (size_t)n) == n;
  close(fd);
  if (!ok || rename(tmp, file) < 0) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

static pid_t read_pid_file(const char *path) {
  char buf[64];
  if (read_small_file(path, buf, sizeof(buf)) <= 0) return 0;
  buf[strcspn(buf, "\n")] = '\0';
  pid_t pid;
  return parse_pid(buf, &pid) ? pid : 0;
}

/* nsenter forks once to enter the pid namespace: the daemon is its first child. */
static pid_t first_child_of(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
  if (read_small_file(path, buf, sizeof(buf)) <= 0) return 0;
  buf[strcspn(buf, " \n")] = '\0';
  pid_t child;
  return parse_pid(buf, &child) ? child : 0;
}

static bool has_exited(pid_t pid) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0) return true;
  return info.si_pid != 0;
}

/* ---- the uplink (slirp4netns) --------------------------------------------------------------- */

struct uplink {
  pid_t replacement;
  int exit_fd; /* write end of the replacement's --exit-fd pipe */
  int restarts;
  long long next_check;
};

static bool comm_is(pid_t pid, const char *name) {
  char path[64], buf[64];
  snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
  if (read_small_file(path, buf, sizeof(buf)) <= 0) return false;
  buf[strcspn(buf, "\n")] = '\0';
  return name == NULL || strcmp(buf, name) == 0;
}

/* rootlesskit's Go runtime forks from any thread: children are listed per task. */
static bool rootlesskit_uplink_alive(pid_t rootlesskit) {
  char dir_path[64];
  snprintf(dir_path, sizeof(dir_path), "/proc/%d/task", (int)rootlesskit);
  DIR *dir = opendir(dir_path);
  if (dir == NULL) return false;
  bool alive = false;
  struct dirent *entry;
  while (!alive && (entry = readdir(dir)) != NULL) {
    if (entry->d_name[0] == '.') continue;
    char path[384];
    static char buf[8192];
    snprintf(path, sizeof(path), "%s/%s/children", dir_path, entry->d_name);
    if (read_small_file(path, buf, sizeof(buf)) <= 0) continue;
    for (char *save = NULL, *tok = strtok_r(buf, " \n", &save); tok != NULL && !alive;
         tok = strtok_r(NULL, " \n", &save)) {
      pid_t child;
      if (parse_pid(tok, &child) && comm_is(child, "slirp4netns")) alive = true;
    }
  }
  closedir(dir);
  return alive;
}

static void uplink_restart(const struct options *o, struct uplink *u) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
    log_line(50, "cannot restart the node uplink (slirp4netns)", "\"errno\":\"%s\"", errno_name(errno));
    return;
  }
  char mtu[32], child[32];
  snprintf(mtu, sizeof(mtu), "--mtu=%d", o->mtu);
  snprintf(child, sizeof(child), "%d", (int)o->child_pid);
  const char *argv[8];
  int n = 0;
  argv[n++] = o->slirp4netns;
  argv[n++] = "--configure";
  argv[n++] = mtu;
  if (o->disable_host_loopback) argv[n++] = "--disable-host-loopback";
  argv[n++] = "--exit-fd=3";
  argv[n++] = child;
  argv[n++] = "tap0";
  argv[n] = NULL;
  pid_t pid = fork();
  if (pid < 0) {
    log_line(50, "cannot restart the node uplink (slirp4netns)", "\"errno\":\"%s\"", errno_name(errno));
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return;
  }
  if (pid == 0) {
    reset_signals_for_exec();
    setsid();
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
    }
    if (dup2(pipe_fds[0], 3) < 0) _exit(127);
    execvp(argv[0], (char *const *)argv);
    fprintf(stderr, "node-supervisor: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(pipe_fds[0]);
  u->replacement = pid;
  u->exit_fd = pipe_fds[1];
  u->restarts += 1;
  log_line(40, "the node uplink (slirp4netns) was gone: started a new one; pod egress is back",
           "\"restarts\":%d,\"slirp4netns\":%d", u->restarts, (int)pid);
}

static void uplink_check(const struct options *o, struct uplink *u) {
  if (u->replacement != 0) return;
  if (rootlesskit_uplink_alive(o->rootlesskit_pid)) return;
  if (!comm_is(o->child_pid, NULL)) return; /* the node itself is gone: nothing to connect */
  uplink_restart(o, u);
}

static bool reaped_within(pid_t pid, int ms) {
  for (int i = 0; i < ms / 10; i++) {
    if (waitpid(pid, NULL, WNOHANG) != 0) return true;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return false;
}

/* The closed --exit-fd ends the replacement; a signal only if it does not go. */
static void uplink_stop(struct uplink *u) {
  if (u->exit_fd >= 0) close(u->exit_fd);
  u->exit_fd = -1;
  if (u->replacement == 0) return;
  pid_t pid = u->replacement;
  u->replacement = 0;
  if (reaped_within(pid, 1000)) return;
  kill(pid, SIGTERM);
  if (reaped_within(pid, 1000)) return;
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* ---- the host dialer: one forked child per connection --------------------------------------- */

static int send_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd p = {fd, POLLOUT, 0};
        if (poll(&p, 1, 10000) <= 0) return -1;
        continue;
      }
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static void dial_refuse(int client, const char *why) {
  char line[600];
  int n = snprintf(line, sizeof(line), "ERR %s\n", why);
  if (n > (int)sizeof(line) - 1) n = (int)sizeof(line) - 1;
  send_all(client, line, (size_t)n);
}

/* "CONNECT <host> <port>": host an IP literal (IPv6 may be bracketed) or a name. */
static bool dial_parse(char *request, char **host, char **port) {
  if (strncmp(request, "CONNECT ", 8) != 0) return false;
  char *h = request + 8;
  char *space = strchr(h, ' ');
  if (space == NULL || space == h || space - h > 255) return false;
  *space = '\0';
  char *p = space + 1;
  size_t plen = strlen(p);
  if (plen < 1 || plen > 5 || strspn(p, "0123456789") != plen) return false;
  long port_number = strtol(p, NULL, 10);
  if (port_number < 1 || port_number > 65535) return false;
  if (strspn(h, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:[]-") != strlen(h))
    return false;
  size_t hlen = strlen(h);
  if (h[0] == '[' && hlen > 2 && h[hlen - 1] == ']') {
    h[hlen - 1] = '\0';
    h += 1;
  }
  *host = h;
  *port = p;
  return true;
}

static int dial_connect(const char *host, const char *port, char *why, size_t why_size) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  struct addrinfo *found = NULL;
  int rc = getaddrinfo(host, port, &hints, &found);
  if (rc != 0) {
    snprintf(why, why_size, "getaddrinfo %.256s: %.200s", host, gai_strerror(rc));
    return -1;
  }
  int fd = -1, last_errno = 0;
  for (struct addrinfo *a = found; a != NULL && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
      last_errno = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0)
    snprintf(why, why_size, "connect %s %.256s:%.8s", errno_name(last_errno), host, port);
  return fd;
}

/* Copies both ways until both directions ended; a half-close is passed on as one. */
static void dial_copy(int a, int b) {
  static char buf_ab[65536], buf_ba[65536];
  bool a_open = true, b_open = true;
  while (a_open || b_open) {
    struct pollfd p[2] = {{a, a_open ? POLLIN : 0, 0}, {b, b_open ? POLLIN : 0, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (a_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = recv(a, buf_ab, sizeof(buf_ab), 0);
      if (n > 0) {
        if (send_all(b, buf_ab, (size_t)n) < 0) return;
      } else if (n == 0 || errno != EINTR) {
        if (n < 0) return;
        a_open = false;
        shutdown(b, SHUT_WR);
      }
    }
    if (b_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = recv(b, buf_ba, sizeof(buf_ba), 0);
      if (n > 0) {
        if (send_all(a, buf_ba, (size_t)n) < 0) return;
      } else if (n == 0 || errno != EINTR) {
        if (n < 0) return;
        b_open = false;
        shutdown(a, SHUT_WR);
      }
    }
  }
}

static void dial_serve(int client) {
  char request[DIAL_MAX_REQUEST + 1];
  size_t len = 0;
  char *newline = NULL;
  long long deadline = now_ms(CLOCK_MONOTONIC) + DIAL_HANDSHAKE_MS;
  while (newline == NULL) {
    long long left = deadline - now_ms(CLOCK_MONOTONIC);
    struct pollfd p = {client, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, (int)left) <= 0) return;
    ssize_t n = recv(client, request + len, DIAL_MAX_REQUEST - len, 0);
    if (n <= 0) return;
    len += (size_t)n;
    request[len] = '\0';
    newline = memchr(request, '\n', len);
    if (newline == NULL && len >= DIAL_MAX_REQUEST) return;
  }
  *newline = '\0';
  size_t rest = len - (size_t)(newline + 1 - request);
  char *host = NULL, *port = NULL;
  if (!dial_parse(request, &host, &port)) {
    dial_refuse(client, "malformed request");
    return;
  }
  char why[512];
  int upstream = dial_connect(host, port, why, sizeof(why));
  if (upstream < 0) {
    dial_refuse(client, why);
    return;
  }
  if (send_all(client, "OK\n", 3) < 0) return;
  if (rest > 0 && send_all(upstream, newline + 1, rest) < 0) return;
  dial_copy(client, upstream);
}

/* ---- the daemon's IPC channel --------------------------------------------------------------- */

struct handle_out {
  int fd;
  long long id;
  int port; /* a listener's bound port; -1 for a dialed connection */
};

/* A connection to the host asked for by the daemon, its connect() under way. */
struct dial_out {
  int fd;
  long long id;
  long long deadline;
  char where[300];
};

#define MAX_DIALS 64

struct ipc {
  int fd;
  char buf[IPC_BUFFER];
  size_t len;
  bool awaiting_ack;
  struct handle_out queue[MAX_QUEUED_HANDLES];
  size_t queued;
  struct dial_out dials[MAX_DIALS];
  size_t dialing;
};

static void ipc_send_line(struct ipc *c, const char *line) {
  if (c->fd >= 0 && send_all(c->fd, line, strlen(line)) < 0)
    log_line(40, "could not answer the daemon on its channel", "\"errno\":\"%s\"", errno_name(errno));
}

static void ipc_send_handle(struct ipc *c, const struct handle_out *h) {
  char line[256];
  int n = h->port >= 0
              ? snprintf(line, sizeof(line),
                         "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Server\",\"msg\":"
                         "{\"type\":\"rcri:listener\",\"id\":%lld,\"port\":%d}}\n",
                         h->id, h->port)
              : snprintf(line, sizeof(line),
                         "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":"
                         "{\"type\":\"rcri:dialed\",\"id\":%lld}}\n",
                         h->id);
  char control[CMSG_SPACE(sizeof(int))];
  memset(control, 0, sizeof(control));
  struct iovec iov = {line, (size_t)n};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &h->fd, sizeof(int));
  ssize_t sent;
  do sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  /* The daemon holds its own reference now (or never will): this copy goes either way. */
  close(h->fd);
  if (sent < 0) {
    log_line(40, "could not hand a host listener to the daemon",
             "\"port\":%d,\"errno\":\"%s\"", h->port, errno_name(errno));
    return;
  }
  if ((size_t)sent < (size_t)n) send_all(c->fd, line + sent, (size_t)n - (size_t)sent);
  c->awaiting_ack = true;
}

/* Sends a handle now, or queues it behind the one awaiting its ACK; false when the queue is full (fd closed). */
static bool ipc_hand_over(struct ipc *c, const struct handle_out *h) {
  if (!c->awaiting_ack) {
    ipc_send_handle(c, h);
    return true;
  }
  if (c->queued < MAX_QUEUED_HANDLES) {
    c->queue[c->queued++] = *h;
    return true;
  }
  close(h->fd);
  return false;
}

static void ipc_error(struct ipc *c, const char *type, long long id, const char *code, const char *message) {
  char line[1024];
  char escaped[700];
  size_t j = 0;
  for (const unsigned char *p = (const unsigned char *)message; *p != '\0' && j < sizeof(escaped) - 7;
       p++) {
    if (*p == '"' || *p == '\\') {
      escaped[j++] = '\\';
      escaped[j++] = (char)*p;
    } else if (*p >= 0x20 && *p < 0x7f) {
      escaped[j++] = (char)*p;
    }
  }
  escaped[j] = '\0';
  snprintf(line, sizeof(line),
           "{\"type\":\"%s\",\"id\":%lld,\"code\":\"%s\",\"message\":\"%s\"}\n", type, id,
           code, escaped);
  ipc_send_line(c, line);
}

/* A member of a flat JSON object written by JSON.stringify: "key":<number>. */
static bool json_number(const char *line, const char *key, long long *out) {
  char pattern[64];
  snprintf(pattern, sizeof(pattern), "\"%s\":", key);
  const char *at = strstr(line, pattern);
  if (at == NULL) return false;
  at += strlen(pattern);
  char *end = NULL;
  errno = 0;
  long long v = strtoll(at, &end, 10);
  if (errno != 0 || end == at || (*end != ',' && *end != '}')) return false;
  *out = v;
  return true;
}

/* "key":"<string without escapes>" */
static bool json_plain_string(const char *line, const char *key, char *out, size_t size) {
  char pattern[64];
  snprintf(pattern, sizeof(pattern), "\"%s\":\"", key);
  const char *at = strstr(line, pattern);
  if (at == NULL) return false;
  at += strlen(pattern);
  const char *end = strchr(at, '"');
  if (end == NULL || (size_t)(end - at) >= size || memchr(at, '\\', (size_t)(end - at)) != NULL)
    return false;
  memcpy(out, at, (size_t)(end - at));
  out[end - at] = '\0';
  return true;
}

union ip_address {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
};

/* host (an IPv4 or IPv6 literal) and port as a socket address; false for anything else. */
static bool ip_address(const char *host, int port, union ip_address *addr, socklen_t *len) {
  memset(addr, 0, sizeof(*addr));
  if (inet_pton(AF_INET, host, &addr->v4.sin_addr) == 1) {
    addr->v4.sin_family = AF_INET;
    addr->v4.sin_port = htons((uint16_t)port);
    *len = sizeof(addr->v4);
    return true;
  }
  if (inet_pton(AF_INET6, host, &addr->v6.sin6_addr) == 1) {
    addr->v6.sin6_family = AF_INET6;
    addr->v6.sin6_port = htons((uint16_t)port);
    *len = sizeof(addr->v6);
    return true;
  }
  return false;
}

static void ipc_listen(struct ipc *c, long long id, const char *host, int port) {
  union ip_address addr;
  socklen_t addr_len;
  if (!ip_address(host, port, &addr, &addr_len)) {
    char why[400];
    snprintf(why, sizeof(why), "the supervisor binds IP addresses only, not \"%.256s\"", host);
    ipc_error(c, "rcri:listener-error", id, "EINVAL", why);
    return;
  }
  int family = addr.sa.sa_family;
  /* Non-blocking, as libuv's own listeners are: the flag travels with the socket. */
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  char why[512];
  if (fd < 0) {
    int e = errno;
    snprintf(why, sizeof(why), "socket %s: %s", errno_name(e), strerror(e));
    ipc_error(c, "rcri:listener-error", id, errno_name(e), why);
    return;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, &addr.sa, addr_len) < 0 || listen(fd, 511) < 0) {
    int e = errno;
    snprintf(why, sizeof(why), "listen %s: %s %s:%d", errno_name(e), strerror(e), host, port);
    close(fd);
    ipc_error(c, "rcri:listener-error", id, errno_name(e), why);
    return;
  }
  addr_len = sizeof(addr);
  getsockname(fd, &addr.sa, &addr_len);
  int bound = ntohs(family == AF_INET ? addr.v4.sin_port : addr.v6.sin6_port);
  struct handle_out h = {fd, id, bound};
  if (!ipc_hand_over(c, &h)) ipc_error(c, "rcri:listener-error", id, "EAGAIN", "too many host listeners asked for at once");
}

/* Starts connecting to host:port (an IP literal) for the daemon; the answer comes from dial_progress. */
static void ipc_dial(struct ipc *c, long long id, const char *host, int port) {
  union ip_address addr;
  socklen_t addr_len;
  if (!ip_address(host, port, &addr, &addr_len)) {
    ipc_error(c, "rcri:dial-error", id, "EINVAL", "the supervisor dials IP addresses only");
    return;
  }
  int family = addr.sa.sa_family;
  if (port < 1 || c->dialing >= MAX_DIALS) {
    ipc_error(c, "rcri:dial-error", id, port < 1 ? "EINVAL" : "EAGAIN",
              port < 1 ? "malformed dial request" : "too many connections asked for at once");
    return;
  }
  char why[512];
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || (connect(fd, &addr.sa, addr_len) < 0 && errno != EINPROGRESS)) {
    int e = errno;
    snprintf(why, sizeof(why), "connect %s %s:%d", errno_name(e), host, port);
    if (fd >= 0) close(fd);
    ipc_error(c, "rcri:dial-error", id, errno_name(e), why);
    return;
  }
  struct dial_out *d = &c->dials[c->dialing++];
  d->fd = fd;
  d->id = id;
  d->deadline = now_ms(CLOCK_MONOTONIC) + DIAL_HANDSHAKE_MS;
  snprintf(d->where, sizeof(d->where), "%s:%d", host, port);
}

/* Answers every dial whose connect() finished (or whose time ran out). */
static void dial_progress(struct ipc *c) {
  long long now = now_ms(CLOCK_MONOTONIC);
  for (size_t i = 0; i < c->dialing;) {
    struct dial_out *d = &c->dials[i];
    struct pollfd p = {d->fd, POLLOUT, 0};
    int ready = poll(&p, 1, 0);
    if (ready == 0 && now < d->deadline) {
      i++;
      continue;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    if (ready == 0) err = ETIMEDOUT;
    else if (getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err == 0) {
      struct handle_out h = {d->fd, d->id, -1};
      if (!ipc_hand_over(c, &h)) ipc_error(c, "rcri:dial-error", d->id, "EAGAIN", "too many connections asked for at once");
    } else {
      char why[400];
      snprintf(why, sizeof(why), "connect %s %s", errno_name(err), d->where);
      close(d->fd);
      ipc_error(c, "rcri:dial-error", d->id, errno_name(err), why);
    }
    c->dials[i] = c->dials[--c->dialing];
  }
}

static void ipc_line(struct ipc *c, const char *line) {
  if (strstr(line, "\"cmd\":\"NODE_HANDLE_ACK\"") != NULL) {
    c->awaiting_ack = false;
    if (c->queued > 0) {
      struct handle_out next = c->queue[0];
      memmove(c->queue, c->queue + 1, (c->queued - 1) * sizeof(c->queue[0]));
      c->queued -= 1;
      ipc_send_handle(c, &next);
    }
    return;
  }
  if (strstr(line, "\"cmd\":\"NODE_") != NULL) return; /* Node.js's own traffic */
  bool listen = strstr(line, "\"type\":\"rcri:listen\"") != NULL;
  bool dial = strstr(line, "\"type\":\"rcri:dial\"") != NULL;
  if (!listen && !dial) return;
  long long id = 0, port = -1;
  char host[64];
  if (!json_number(line, "id", &id)) return; /* nothing to answer to */
  if (!json_number(line, "port", &port) || port < 0 || port > 65535 ||
      !json_plain_string(line, "host", host, sizeof(host))) {
    ipc_error(c, listen ? "rcri:listener-error" : "rcri:dial-error", id, "EINVAL", "malformed request");
    return;
  }
  if (listen)
    ipc_listen(c, id, host, (int)port);
  else
    ipc_dial(c, id, host, (int)port);
}

/* Reads what the daemon sent; false once the channel is closed. */
static bool ipc_read(struct ipc *c) {
  ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, MSG_DONTWAIT);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return false;
  c->len += (size_t)n;
  c->buf[c->len] = '\0';
  char *start = c->buf;
  char *newline;
  while ((newline = memchr(start, '\n', c->len - (size_t)(start - c->buf))) != NULL) {
    *newline = '\0';
    ipc_line(c, start);
    start = newline + 1;
  }
  size_t rest = c->len - (size_t)(start - c->buf);
  if (rest >= sizeof(c->buf) - 1) {
    log_line(40, "dropped an overlong message from the daemon", NULL);
    rest = 0;
  }
  memmove(c->buf, start, rest);
  c->len = rest;
  return true;
}

/* ---- main ------------------------------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: node-supervisor --run-dir DIR --dial-socket PATH --rootlesskit-pid PID "
          "--child-pid PID --slirp4netns PATH --mtu N [--disable-host-loopback] -- COMMAND...\n");
  exit(2);
}

static void parse_options(int argc, char **argv, struct options *o) {
  memset(o, 0, sizeof(*o));
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "--disable-host-loopback") == 0) {
      o->disable_host_loopback = true;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (strcmp(a, "--run-dir") == 0)
      o->run_dir = v;
    else if (strcmp(a, "--dial-socket") == 0)
      o->dial_socket = v;
    else if (strcmp(a, "--slirp4netns") == 0)
      o->slirp4netns = v;
    else if (strcmp(a, "--rootlesskit-pid") == 0) {
      if (!parse_pid(v, &o->rootlesskit_pid)) usage();
    } else if (strcmp(a, "--child-pid") == 0) {
      if (!parse_pid(v, &o->child_pid)) usage();
    } else if (strcmp(a, "--mtu") == 0) {
      o->mtu = atoi(v);
    } else
      usage();
  }
  if (i >= argc || o->run_dir == NULL || o->dial_socket == NULL || o->slirp4netns == NULL ||
      o->rootlesskit_pid == 0 || o->child_pid == 0 || o->mtu < 576 || o->mtu > 65520)
    usage();
  o->command = argv + i;
}

static int listen_dialer(const char *path) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(addr.sun_path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(addr.sun_path, path);
  unlink(path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  mode_t old = umask(0077);
  int rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
  umask(old);
  if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

int main(int argc, char **argv) {
  struct options o;
  parse_options(argc, argv, &o);

  sigset_t handled;
  sigemptyset(&handled);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGHUP);
  sigaddset(&handled, SIGCHLD);
  sigprocmask(SIG_BLOCK, &handled, NULL);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    log_line(50, "cannot watch signals", "\"errno\":\"%s\"", errno_name(errno));
    return 1;
  }

  int dial = listen_dialer(o.dial_socket);
  if (dial < 0) {
    log_line(50, "cannot listen for the host dialer", "\"errno\":\"%s\"", errno_name(errno));
    return 1;
  }

  int channel[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) < 0) {
    log_line(50, "cannot make the daemon's channel", "\"errno\":\"%s\"", errno_name(errno));
    return 1;
  }
  pid_t nsenter = fork();
  if (nsenter < 0) {
    log_line(50, "cannot start the daemon", "\"errno\":\"%s\"", errno_name(errno));
    return 1;
  }
  if (nsenter == 0) {
    reset_signals_for_exec();
    /* dup2 clears close-on-exec on fd 3; a socket already at 3 needs it cleared by hand. */
    if (channel[1] == 3)
      fcntl(3, F_SETFD, 0);
    else if (dup2(channel[1], 3) < 0)
      _exit(127);
    setenv("NODE_CHANNEL_FD", "3", 1);
    setenv("NODE_CHANNEL_SERIALIZATION_MODE", "json", 1);
    execvp(o.command[0], o.command);
    fprintf(stderr, "node-supervisor: cannot run %s: %s\n", o.command[0], strerror(errno));
    _exit(127);
  }
  close(channel[1]);

  pid_t daemon = 0;
  for (int i = 0; i < 400 && daemon == 0 && !has_exited(nsenter); i++) {
    daemon = first_child_of(nsenter);
    if (daemon == 0) {
      struct timespec ts = {0, 5 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  if (daemon != 0 && write_pid_file(o.run_dir, daemon) < 0)
    log_line(40, "cannot write the daemon's pid file", "\"errno\":\"%s\"", errno_name(errno));

  static struct ipc ipc;
  ipc.fd = channel[0];
  struct uplink uplink = {0, -1, 0, 0};
  int dial_children = 0;
  bool done = false;
  int status = 0;

  while (!done) {
    long long now = now_ms(CLOCK_MONOTONIC);
    if (now >= uplink.next_check) {
      uplink_check(&o, &uplink);
      uplink.next_check = now + UPLINK_INTERVAL_MS;
    }
    struct pollfd p[3 + MAX_DIALS] = {{sfd, POLLIN, 0}, {dial, POLLIN, 0}, {ipc.fd, POLLIN, 0}};
    nfds_t count = ipc.fd >= 0 ? 3 : 2;
    long long wake = uplink.next_check;
    for (size_t i = 0; ipc.fd >= 0 && i < ipc.dialing; i++) {
      p[count++] = (struct pollfd){ipc.dials[i].fd, POLLOUT, 0};
      if (ipc.dials[i].deadline < wake) wake = ipc.dials[i].deadline;
    }
    int rc = poll(p, count, wake > now ? (int)(wake - now) : 0);
    if (ipc.dialing > 0) dial_progress(&ipc);
    if (rc < 0 && errno != EINTR) {
      log_line(50, "poll failed", "\"errno\":\"%s\"", errno_name(errno));
      break;
    }
    if (rc <= 0) continue;

    if (p[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo != SIGCHLD) {
          kill(daemon != 0 ? daemon : nsenter, (int)si.ssi_signo);
          continue;
        }
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
          if (pid == nsenter) {
            status = st;
            done = true;
          } else if (pid == uplink.replacement) {
            uplink.replacement = 0;
            if (uplink.exit_fd >= 0) close(uplink.exit_fd);
            uplink.exit_fd = -1;
            log_line(40, "the restarted node uplink ended", "\"status\":%d", st);
          } else if (dial_children > 0) {
            dial_children -= 1;
          }
        }
      }
    }

    if (p[1].revents & POLLIN) {
      int client;
      while ((client = accept4(dial, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
        if (dial_children >= DIAL_MAX_CHILDREN) {
          close(client);
          continue;
        }
        pid_t child = fork();
        if (child == 0) {
          prctl(PR_SET_PDEATHSIG, SIGKILL);
          reset_signals_for_exec();
          signal(SIGPIPE, SIG_IGN);
          close(sfd);
          close(dial);
          if (ipc.fd >= 0) close(ipc.fd);
          if (uplink.exit_fd >= 0) close(uplink.exit_fd);
          dial_serve(client);
          _exit(0);
        }
        if (child > 0) dial_children += 1;
        close(client);
      }
    }

    if (ipc.fd >= 0 && (p[2].revents & (POLLIN | POLLHUP | POLLERR)) && !ipc_read(&ipc)) {
      close(ipc.fd);
      ipc.fd = -1;
      for (size_t i = 0; i < ipc.queued; i++) close(ipc.queue[i].fd);
      ipc.queued = 0;
      for (size_t i = 0; i < ipc.dialing; i++) close(ipc.dials[i].fd);
      ipc.dialing = 0;
    }
  }

  uplink_stop(&uplink);
  close(dial);
  unlink(o.dial_socket);
  char path[4200];
  snprintf(path, sizeof(path), "%s/supervisor.pid", o.run_dir);
  unlink(path);
  snprintf(path, sizeof(path), "%s/rootless-cri.pid", o.run_dir);
  if (daemon != 0 && read_pid_file(path) == daemon) unlink(path);
  if (WIFSIGNALED(status)) {
    log_line(40, "the daemon was killed by a signal; the node keeps running", "\"signal\":%d",
             WTERMSIG(status));
    return 128 + WTERMSIG(status);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
