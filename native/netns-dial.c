/*
 * netns-dial NETNS_FILE PORT
 *
 * Port-forward dialer: joins the network namespace pinned at NETNS_FILE, connects to
 * 127.0.0.1:PORT (then [::1]:PORT) and hands the connected socket to its parent, which then
 * reads and writes the pod's connection itself: no process and no copy sit in between.
 * Node cannot setns() one thread, hence this helper. Never resolves a name.
 *
 * The parent is Node.js and starts this helper with an IPC channel (its fd is in
 * NODE_CHANNEL_FD): the socket goes over it as Node's own handle-passing message (one JSON
 * line with the fd attached by SCM_RIGHTS), which the parent receives as a net.Socket with
 * its 'message' event; the helper exits once the parent acknowledged it.
 *
 * stderr carries one JSON line on failure: {"ok":false,"kind":...,"errno":...,"error":...}
 * and exit 1 (2 for a usage error); nothing on success.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
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

/* Node's handle-passing message: the socket arrives at the parent as a net.Socket. */
static const char HANDLE_MESSAGE[] =
    "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"netnsDial\":\"connected\"}}\n";

/* Sends `sock` over the IPC channel `channel` with Node's handle-passing message. */
static void send_socket(int channel, int sock) {
  struct iovec iov = {.iov_base = (void *)HANDLE_MESSAGE, .iov_len = sizeof(HANDLE_MESSAGE) - 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &sock, sizeof(int));
  ssize_t n;
  do {
    n = sendmsg(channel, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) fail(1, "relay", errno, "hand the connection to the parent");
  if ((size_t)n != iov.iov_len) fail(1, "relay", 0, "hand the connection to the parent: short write");
}

/* Waits (bounded) for the parent's acknowledgement line, so the channel outlives its reply. */
static void await_ack(int channel) {
  alarm(10);
  char buf[512];
  for (;;) {
    ssize_t n = read(channel, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || memchr(buf, '\n', (size_t)n) != NULL) return;
  }
}

static int ipc_channel(void) {
  const char *text = getenv("NODE_CHANNEL_FD");
  if (text == NULL) return -1;
  char *end = NULL;
  errno = 0;
  long fd = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || fd < 0 || fd > 1024) return -1;
  return (int)fd;
}

int main(int argc, char **argv) {
  if (argc != 3) fail(2, "usage", 0, "usage: netns-dial NETNS_FILE PORT");
  int port = parse_port(argv[2]);
  if (port < 0) fail(2, "usage", 0, "PORT must be a number in 1-65535");
  int channel = ipc_channel();
  if (channel < 0) fail(2, "usage", 0, "no IPC channel to the parent (NODE_CHANNEL_FD)");

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
  send_socket(channel, sock);
  close(sock);
  await_ack(channel);
  return 0;
}
