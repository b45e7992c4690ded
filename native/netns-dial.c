/*
 * netns-dial NETNS_FILE PORT
 *
 * Port-forward dialer: joins the network namespace pinned at NETNS_FILE, connects to
 * 127.0.0.1:PORT (then [::1]:PORT), and relays stdin -> socket and socket -> stdout with
 * half-close both ways (stdin EOF -> shutdown(SHUT_WR); socket EOF -> close stdout).
 * Node cannot setns() one thread, hence this helper. Never resolves a name.
 *
 * stderr carries exactly one JSON line: {"ok":true} once connected, or
 * {"ok":false,"kind":...,"errno":...,"error":...} and exit 1 (2 for a usage error).
 * stdout is the relayed byte stream, so nothing else is ever written there.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void json_string(const char *s) {
  fputc('"', stderr);
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(stderr, "\\%c", *p);
    else if (*p < 0x20 || *p >= 0x7f)
      fprintf(stderr, "\\u%04x", *p);
    else
      fputc(*p, stderr);
  }
  fputc('"', stderr);
}

/* One JSON failure line on stderr, then exit. kind: usage | netns | connect | relay. */
__attribute__((noreturn)) static void fail(int code, const char *kind, int errnum, const char *what) {
  char message[512];
  if (errnum != 0)
    snprintf(message, sizeof(message), "%s: %s", what, strerror(errnum));
  else
    snprintf(message, sizeof(message), "%s", what);
  fputs("{\"ok\":false,\"kind\":", stderr);
  json_string(kind);
  if (errnum != 0 && strerrorname_np(errnum) != NULL) {
    fputs(",\"errno\":", stderr);
    json_string(strerrorname_np(errnum));
  }
  fputs(",\"error\":", stderr);
  json_string(message);
  fputs("}\n", stderr);
  fflush(stderr);
  exit(code);
}

static int parse_port(const char *s) {
  char *end = NULL;
  errno = 0;
  long port = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || port < 1 || port > 65535) return -1;
  return (int)port;
}

/* Returns a connected socket, or -1 with errno set from the last attempt. */
static int connect_loopback(int port) {
  int last_errno = ECONNREFUSED;
  for (int attempt = 0; attempt < 2; attempt++) {
    struct sockaddr_storage addr;
    socklen_t len;
    memset(&addr, 0, sizeof(addr));
    if (attempt == 0) {
      struct sockaddr_in *in4 = (struct sockaddr_in *)&addr;
      in4->sin_family = AF_INET;
      in4->sin_port = htons((uint16_t)port);
      in4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof(*in4);
    } else {
      struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
      in6->sin6_family = AF_INET6;
      in6->sin6_port = htons((uint16_t)port);
      in6->sin6_addr = in6addr_loopback;
      len = sizeof(*in6);
    }
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    if (connect(fd, (struct sockaddr *)&addr, len) == 0) return fd;
    /* Keep the IPv4 error unless IPv6 tells us more than "no IPv6 here". */
    if (attempt == 0 || (errno != EAFNOSUPPORT && errno != EADDRNOTAVAIL)) last_errno = errno;
    close(fd);
  }
  errno = last_errno;
  return -1;
}

/* One direction of the relay: bytes read from `from` wait in `buf` until `to` takes them. */
struct pipe_dir {
  int from, to;
  int open; /* `from` has not reached EOF */
  char buf[64 * 1024];
  size_t len, off;
};

/*
 * Relays until both directions are done. All fds are non-blocking and each direction has
 * its own buffer, so a peer that is slow to read in one direction never stops the other
 * (an echo server would otherwise deadlock against us once both socket buffers fill).
 */
static void relay(int sock) {
  static struct pipe_dir up = {.from = STDIN_FILENO, .open = 1};
  static struct pipe_dir down = {.to = STDOUT_FILENO, .open = 1};
  up.to = sock;
  down.from = sock;
  int fds_nb[] = {STDIN_FILENO, STDOUT_FILENO, sock};
  for (size_t i = 0; i < 3; i++) fcntl(fds_nb[i], F_SETFL, fcntl(fds_nb[i], F_GETFL) | O_NONBLOCK);
  struct pipe_dir *dirs[2] = {&up, &down};
  while (up.open || up.len > 0 || down.open || down.len > 0) {
    struct pollfd fds[4];
    for (int d = 0; d < 2; d++) {
      struct pipe_dir *p = dirs[d];
      fds[d * 2] = (struct pollfd){.fd = p->open && p->len == 0 ? p->from : -1, .events = POLLIN};
      fds[d * 2 + 1] = (struct pollfd){.fd = p->len > 0 ? p->to : -1, .events = POLLOUT};
    }
    if (poll(fds, 4, -1) < 0) {
      if (errno == EINTR) continue;
      fail(1, "relay", errno, "poll");
    }
    for (int d = 0; d < 2; d++) {
      struct pipe_dir *p = dirs[d];
      if (fds[d * 2].revents != 0) {
        ssize_t n = read(p->from, p->buf, sizeof(p->buf));
        if (n > 0) {
          p->len = (size_t)n;
          p->off = 0;
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          p->open = 0;
        }
      }
      if (fds[d * 2 + 1].revents != 0) {
        ssize_t n = write(p->to, p->buf + p->off, p->len - p->off);
        if (n > 0) {
          p->off += (size_t)n;
          if (p->off == p->len) p->len = p->off = 0;
        } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
          /* The reader is gone: drop what it would have got and stop reading for it. */
          p->len = p->off = 0;
          p->open = 0;
        }
      }
      if (!p->open && p->len == 0 && p->to >= 0) {
        /* Half-close: the client's EOF reaches the pod, the pod's EOF reaches the client. */
        if (p == &up)
          shutdown(sock, SHUT_WR);
        else
          close(STDOUT_FILENO);
        p->to = -1;
      }
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 3) fail(2, "usage", 0, "usage: netns-dial NETNS_FILE PORT");
  int port = parse_port(argv[2]);
  if (port < 0) fail(2, "usage", 0, "PORT must be a number in 1-65535");
  /* A reader that went away must end the relay, not kill it silently mid-report. */
  signal(SIGPIPE, SIG_IGN);

  int ns = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (ns < 0) fail(1, "netns", errno, "open network namespace file");
  if (setns(ns, CLONE_NEWNET) < 0) fail(1, "netns", errno, "join network namespace");
  close(ns);

  int sock = connect_loopback(port);
  if (sock < 0) {
    char what[64];
    snprintf(what, sizeof(what), "connect to localhost:%d", port);
    fail(1, "connect", errno, what);
  }
  fputs("{\"ok\":true}\n", stderr);
  fflush(stderr);
  relay(sock);
  close(sock);
  return 0;
}
