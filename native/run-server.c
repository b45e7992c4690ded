/*
 * run-server: starts the daemon's run-to-completion programs (crun, CNI plugins, fusermount3,
 * the native helpers) so that the daemon does not fork itself for each.
 *
 * Why: forking copies the parent's page tables, and the daemon is a ~90 MiB Node.js process:
 * each spawn blocked its event loop ~2 ms (measured: 0.9 ms at 50 MiB RSS, 3.0 ms at 150 MiB),
 * about ten times per pod lifecycle. This program is 1 MiB; forking it costs ~0.1 ms, and the
 * daemon's part is one message. Started by the daemon (src/os/run-server.ts) with a Node.js IPC
 * channel (NODE_CHANNEL_FD, JSON lines); it dies with the daemon (PR_SET_PDEATHSIG).
 *
 *   daemon → server  {"type":"run","req":"<base64>"}   the request, NUL-separated:
 *                    id, program, cwd ("" = inherit), settle ("0"/"1"), report ("0"/"1"),
 *                    output cap, argc, args..., envc, env..., then the stdin bytes (none:
 *                    /dev/null)
 *                    {"type":"release","id":N}   (a report job: stop reading its pipes)
 *   server → daemon  {"type":"started","id":N,"pid":P}
 *                    {"type":"report","id":N,"data":"<base64>"}   (what arrived on fd 3)
 *                    {"type":"done","id":N,"code":C|null,"signal":S|null,
 *                     "out":"<base64>","err":"<base64>","truncated":bool,"held":bool}
 *                    ("held": settled while something still held stdout or stderr open)
 *                    {"type":"done","id":N,"errno":"ENOENT"}   (could not start it)
 *
 * Each program leads its own process group (setsid), as src/os/process-runner.ts's run() does:
 * the daemon signals the group itself for timeouts and aborts (same pid namespace). Output is
 * kept up to the cap per stream and the rest read and dropped. "settle" ends a run when the
 * program exits even if a grandchild keeps the pipes open (fuse-overlayfs daemonizes), keeping
 * what arrives within 200 ms of the exit.
 *
 * "report" gives the program a pipe on fd 3 whose bytes are passed on as they arrive (conmon's
 * sync pipe: `crun create`'s result comes on it from conmon's daemonized child, long after the
 * started process exited). Such a job is done when the program has exited and either every pipe
 * is closed or the daemon released it (it has what it wanted; conmon keeps its end open).
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

extern char **environ;

#define SETTLE_MS 200
#define MAX_JOBS 4096
#define MAX_LINE (64 * 1024 * 1024)

struct output {
  char *data;
  size_t len, cap_alloc, cap;
  bool truncated, open;
  int fd;
};

struct job {
  long long id;
  pid_t pid;
  bool exited, settle, released;
  int status;
  long long exited_at;
  struct output out, err;
  int report_fd; /* fd 3's read end, -1 when none or closed */
  int in_fd;
  char *input;
  size_t input_len, input_off;
};

static struct job *g_jobs[MAX_JOBS];
static int g_channel = -1;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- base64 ------------------------------------------------------------------------------------ */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const char *in, size_t len, size_t *out_len) {
  size_t n = 4 * ((len + 2) / 3);
  char *out = malloc(n + 1);
  if (out == NULL) return NULL;
  size_t j = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
    if (i + 1 < len) v |= (uint32_t)(unsigned char)in[i + 1] << 8;
    if (i + 2 < len) v |= (uint32_t)(unsigned char)in[i + 2];
    out[j++] = B64[(v >> 18) & 63];
    out[j++] = B64[(v >> 12) & 63];
    out[j++] = i + 1 < len ? B64[(v >> 6) & 63] : '=';
    out[j++] = i + 2 < len ? B64[v & 63] : '=';
  }
  out[j] = '\0';
  *out_len = j;
  return out;
}

static int b64_value(char c) {
  const char *p = strchr(B64, c);
  return c != '\0' && p != NULL ? (int)(p - B64) : -1;
}

static char *b64_decode(const char *in, size_t len, size_t *out_len) {
  char *out = malloc(len / 4 * 3 + 3);
  if (out == NULL) return NULL;
  size_t j = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len && in[i] != '='; i++) {
    int v = b64_value(in[i]);
    if (v < 0) {
      free(out);
      return NULL;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[j++] = (char)((acc >> bits) & 0xff);
    }
  }
  *out_len = j;
  return out;
}

/* ---- the channel ------------------------------------------------------------------------------- */

static void send_all(const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(g_channel, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd p = {g_channel, POLLOUT, 0};
        poll(&p, 1, 1000);
        continue;
      }
      _exit(0); /* the daemon is gone */
    }
    buf += n;
    len -= (size_t)n;
  }
}

static void send_line(const char *line) { send_all(line, strlen(line)); }

static void send_started(const struct job *j) {
  char line[128];
  snprintf(line, sizeof(line), "{\"type\":\"started\",\"id\":%lld,\"pid\":%d}\n", j->id, (int)j->pid);
  send_line(line);
}

static void send_not_started(long long id, int errnum) {
  char line[160];
  const char *name = strerrorname_np(errnum);
  snprintf(line, sizeof(line), "{\"type\":\"done\",\"id\":%lld,\"errno\":\"%s\"}\n", id,
           name != NULL ? name : "EIO");
  send_line(line);
}

static void send_report(const struct job *j, const char *data, size_t len) {
  size_t b64_len = 0;
  char *b64 = b64_encode(data, len, &b64_len);
  if (b64 == NULL) return;
  char head[96];
  snprintf(head, sizeof(head), "{\"type\":\"report\",\"id\":%lld,\"data\":\"", j->id);
  send_line(head);
  send_all(b64, b64_len);
  send_line("\"}\n");
  free(b64);
}

static void send_done(struct job *j, bool held) {
  size_t out_len = 0, err_len = 0;
  char *out = b64_encode(j->out.data != NULL ? j->out.data : "", j->out.len, &out_len);
  char *err = b64_encode(j->err.data != NULL ? j->err.data : "", j->err.len, &err_len);
  char head[256];
  char code[16] = "null", sig[48] = "null";
  if (WIFEXITED(j->status)) snprintf(code, sizeof(code), "%d", WEXITSTATUS(j->status));
  if (WIFSIGNALED(j->status)) {
    const char *abbrev = sigabbrev_np(WTERMSIG(j->status));
    snprintf(sig, sizeof(sig), "\"SIG%s\"", abbrev != NULL ? abbrev : "KILL");
  }
  snprintf(head, sizeof(head),
           "{\"type\":\"done\",\"id\":%lld,\"code\":%s,\"signal\":%s,\"truncated\":%s,\"held\":%s,\"out\":\"",
           j->id, code, sig, j->out.truncated || j->err.truncated ? "true" : "false", held ? "true" : "false");
  send_line(head);
  if (out != NULL) send_all(out, out_len);
  send_line("\",\"err\":\"");
  if (err != NULL) send_all(err, err_len);
  send_line("\"}\n");
  free(out);
  free(err);
}

/* ---- jobs -------------------------------------------------------------------------------------- */

static void close_output(struct output *o) {
  if (o->fd >= 0) close(o->fd);
  o->fd = -1;
  o->open = false;
}

static void finish(int slot, bool held) {
  struct job *j = g_jobs[slot];
  send_done(j, held);
  close_output(&j->out);
  close_output(&j->err);
  if (j->report_fd >= 0) close(j->report_fd);
  if (j->in_fd >= 0) close(j->in_fd);
  free(j->out.data);
  free(j->err.data);
  free(j->input);
  free(j);
  g_jobs[slot] = NULL;
}

static void read_output(struct output *o) {
  char buf[65536];
  ssize_t n = read(o->fd, buf, sizeof(buf));
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    close_output(o);
    return;
  }
  size_t keep = (size_t)n;
  if (o->len + keep > o->cap) {
    keep = o->cap > o->len ? o->cap - o->len : 0;
    o->truncated = true;
  }
  if (keep == 0) return;
  if (o->len + keep > o->cap_alloc) {
    size_t want = o->cap_alloc == 0 ? 4096 : o->cap_alloc;
    while (want < o->len + keep) want *= 2;
    char *grown = realloc(o->data, want);
    if (grown == NULL) {
      o->truncated = true;
      return;
    }
    o->data = grown;
    o->cap_alloc = want;
  }
  memcpy(o->data + o->len, buf, keep);
  o->len += keep;
}

static void read_report(struct job *j) {
  char buf[65536];
  ssize_t n = read(j->report_fd, buf, sizeof(buf));
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    close(j->report_fd);
    j->report_fd = -1;
    return;
  }
  send_report(j, buf, (size_t)n);
}

/* The daemon has what it wanted of a report job: its pipes are no longer read. */
static void release_job(long long id) {
  for (int i = 0; i < MAX_JOBS; i++) {
    struct job *j = g_jobs[i];
    if (j == NULL || j->id != id) continue;
    j->released = true;
    if (j->report_fd >= 0) close(j->report_fd);
    j->report_fd = -1;
    close_output(&j->out);
    close_output(&j->err);
  }
}

static void write_input(struct job *j) {
  while (j->input_off < j->input_len) {
    ssize_t n = write(j->in_fd, j->input + j->input_off, j->input_len - j->input_off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      break; /* EPIPE: the program did not read it all; that is its business */
    }
    j->input_off += (size_t)n;
  }
  close(j->in_fd);
  j->in_fd = -1;
}

/* Splits the decoded request in place; false when it is malformed. */
static bool next_field(char **cursor, char *end, char **field) {
  if (*cursor >= end) return false;
  char *nul = memchr(*cursor, '\0', (size_t)(end - *cursor));
  if (nul == NULL) return false;
  *field = *cursor;
  *cursor = nul + 1;
  return true;
}

static void start_job(char *req, size_t req_len) {
  char *cursor = req, *end = req + req_len;
  char *id_s, *program, *cwd, *settle_s, *report_s, *cap_s, *argc_s, *envc_s;
  if (!next_field(&cursor, end, &id_s) || !next_field(&cursor, end, &program) ||
      !next_field(&cursor, end, &cwd) || !next_field(&cursor, end, &settle_s) ||
      !next_field(&cursor, end, &report_s) || !next_field(&cursor, end, &cap_s) ||
      !next_field(&cursor, end, &argc_s))
    return;
  bool has_report = report_s[0] == '1';
  long long id = strtoll(id_s, NULL, 10);
  long argc = strtol(argc_s, NULL, 10);
  if (argc < 0 || argc > 100000) {
    send_not_started(id, EINVAL);
    return;
  }
  char **argv = calloc((size_t)argc + 2, sizeof(char *));
  if (argv == NULL) {
    send_not_started(id, ENOMEM);
    return;
  }
  argv[0] = program;
  for (long i = 0; i < argc; i++)
    if (!next_field(&cursor, end, &argv[i + 1])) {
      free(argv);
      send_not_started(id, EINVAL);
      return;
    }
  if (!next_field(&cursor, end, &envc_s)) {
    free(argv);
    send_not_started(id, EINVAL);
    return;
  }
  long envc = strtol(envc_s, NULL, 10);
  char **envp = envc >= 0 && envc <= 100000 ? calloc((size_t)envc + 1, sizeof(char *)) : NULL;
  if (envp == NULL) {
    free(argv);
    send_not_started(id, EINVAL);
    return;
  }
  for (long i = 0; i < envc; i++)
    if (!next_field(&cursor, end, &envp[i])) {
      free(argv);
      free(envp);
      send_not_started(id, EINVAL);
      return;
    }
  bool has_input = cursor < end && *cursor == '1';
  if (cursor < end) cursor++;
  size_t input_len = has_input ? (size_t)(end - cursor) : 0;

  int slot = -1;
  for (int i = 0; i < MAX_JOBS && slot < 0; i++)
    if (g_jobs[i] == NULL) slot = i;
  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, in_pipe[2] = {-1, -1}, exec_pipe[2] = {-1, -1};
  int report_pipe[2] = {-1, -1};
  if (slot < 0 || pipe2(out_pipe, O_CLOEXEC) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0 ||
      (has_input && pipe2(in_pipe, O_CLOEXEC) < 0) || (has_report && pipe2(report_pipe, O_CLOEXEC) < 0) ||
      pipe2(exec_pipe, O_CLOEXEC) < 0) {
    int e = slot < 0 ? EAGAIN : errno;
    int fds[] = {out_pipe[0],  out_pipe[1],  err_pipe[0],    err_pipe[1],    in_pipe[0],
                 in_pipe[1],   exec_pipe[0], exec_pipe[1],   report_pipe[0], report_pipe[1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
      if (fds[i] >= 0) close(fds[i]);
    free(argv);
    free(envp);
    send_not_started(id, e);
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, 0);
    setsid();
    int in = has_input ? in_pipe[0] : open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) goto fail;
    /* dup2 onto itself keeps close-on-exec: clear it by hand then. */
    if (has_report && (report_pipe[1] == 3 ? fcntl(3, F_SETFD, 0) : dup2(report_pipe[1], 3)) < 0) goto fail;
    if (cwd[0] != '\0' && chdir(cwd) < 0) goto fail;
    environ = envp;
    execvp(program, argv);
  fail:;
    int e = errno;
    if (write(exec_pipe[1], &e, sizeof(e)) < 0) _exit(127);
    _exit(127);
  }
  int fork_errno = errno;
  close(out_pipe[1]);
  close(err_pipe[1]);
  close(exec_pipe[1]);
  if (has_input) close(in_pipe[0]);
  if (has_report) close(report_pipe[1]);
  free(argv);
  free(envp);
  int exec_errno = 0;
  if (pid < 0) {
    exec_errno = fork_errno;
  } else {
    ssize_t n;
    do n = read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(exec_errno)) exec_errno = 0;
  }
  close(exec_pipe[0]);
  if (exec_errno != 0) {
    if (pid > 0) waitpid(pid, NULL, 0);
    close(out_pipe[0]);
    close(err_pipe[0]);
    if (has_input) close(in_pipe[1]);
    if (has_report) close(report_pipe[0]);
    send_not_started(id, exec_errno);
    return;
  }
  struct job *j = calloc(1, sizeof(*j));
  if (j == NULL) _exit(1);
  j->id = id;
  j->pid = pid;
  j->settle = settle_s[0] == '1';
  long long cap = strtoll(cap_s, NULL, 10);
  j->out = (struct output){NULL, 0, 0, cap > 0 ? (size_t)cap : 0, false, true, out_pipe[0]};
  j->err = (struct output){NULL, 0, 0, cap > 0 ? (size_t)cap : 0, false, true, err_pipe[0]};
  fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
  fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
  j->report_fd = has_report ? report_pipe[0] : -1;
  if (has_report) fcntl(report_pipe[0], F_SETFL, O_NONBLOCK);
  j->in_fd = -1;
  if (has_input) {
    j->input = malloc(input_len > 0 ? input_len : 1);
    if (j->input == NULL) _exit(1);
    memcpy(j->input, cursor, input_len);
    j->input_len = input_len;
    j->in_fd = in_pipe[1];
    fcntl(j->in_fd, F_SETFL, O_NONBLOCK);
  }
  g_jobs[slot] = j;
  send_started(j);
  if (j->in_fd >= 0) write_input(j);
}

static void handle_line(char *line) {
  if (strstr(line, "\"type\":\"release\"") != NULL) {
    char *at = strstr(line, "\"id\":");
    if (at != NULL) release_job(strtoll(at + 5, NULL, 10));
    return;
  }
  if (strstr(line, "\"type\":\"run\"") == NULL) return;
  char *at = strstr(line, "\"req\":\"");
  if (at == NULL) return;
  at += 7;
  char *end = strchr(at, '"');
  if (end == NULL) return;
  size_t len = 0;
  char *req = b64_decode(at, (size_t)(end - at), &len);
  if (req == NULL) return;
  start_job(req, len);
  free(req);
}

int main(void) {
  const char *fd_text = getenv("NODE_CHANNEL_FD");
  if (fd_text == NULL) {
    fprintf(stderr, "run-server: start it with a Node.js IPC channel (NODE_CHANNEL_FD)\n");
    return 2;
  }
  g_channel = atoi(fd_text);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 0;
  signal(SIGPIPE, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return 1;
  fcntl(g_channel, F_SETFD, FD_CLOEXEC);

  size_t buf_cap = 1 << 16, buf_len = 0;
  char *buf = malloc(buf_cap);
  if (buf == NULL) return 1;
  static struct pollfd fds[2 + 4 * MAX_JOBS];
  static int owner[2 + 4 * MAX_JOBS];
  static char which[2 + 4 * MAX_JOBS];
  for (;;) {
    int n = 0;
    fds[n++] = (struct pollfd){g_channel, POLLIN, 0};
    fds[n++] = (struct pollfd){sfd, POLLIN, 0};
    long long now = now_ms();
    int timeout = -1;
    for (int i = 0; i < MAX_JOBS; i++) {
      struct job *j = g_jobs[i];
      if (j == NULL) continue;
      if (j->out.open) owner[n] = i, which[n] = 'o', fds[n++] = (struct pollfd){j->out.fd, POLLIN, 0};
      if (j->err.open) owner[n] = i, which[n] = 'e', fds[n++] = (struct pollfd){j->err.fd, POLLIN, 0};
      if (j->in_fd >= 0) owner[n] = i, which[n] = 'i', fds[n++] = (struct pollfd){j->in_fd, POLLOUT, 0};
      if (j->report_fd >= 0) owner[n] = i, which[n] = 'r', fds[n++] = (struct pollfd){j->report_fd, POLLIN, 0};
      if (j->exited && j->settle) {
        long long left = j->exited_at + SETTLE_MS - now;
        int t = left > 0 ? (int)left : 0;
        if (timeout < 0 || t < timeout) timeout = t;
      }
    }
    int rc = poll(fds, (nfds_t)n, timeout);
    if (rc < 0 && errno != EINTR) return 1;

    if (rc > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (buf_len == buf_cap) {
        if (buf_cap >= MAX_LINE) return 1;
        char *grown = realloc(buf, buf_cap * 2);
        if (grown == NULL) return 1;
        buf = grown;
        buf_cap *= 2;
      }
      ssize_t got = recv(g_channel, buf + buf_len, buf_cap - buf_len, MSG_DONTWAIT);
      if (got == 0) return 0; /* the daemon is gone */
      if (got > 0) {
        buf_len += (size_t)got;
        char *start = buf, *newline;
        while ((newline = memchr(start, '\n', buf_len - (size_t)(start - buf))) != NULL) {
          *newline = '\0';
          handle_line(start);
          start = newline + 1;
        }
        buf_len -= (size_t)(start - buf);
        memmove(buf, start, buf_len);
      }
    }
    if (rc > 0) {
      for (int k = 2; k < n; k++) {
        if (fds[k].revents == 0) continue;
        struct job *j = g_jobs[owner[k]];
        if (j == NULL) continue;
        if (which[k] == 'o' && j->out.open) read_output(&j->out);
        if (which[k] == 'e' && j->err.open) read_output(&j->err);
        if (which[k] == 'i' && j->in_fd >= 0) write_input(j);
        if (which[k] == 'r' && j->report_fd >= 0) read_report(j);
      }
    }
    if (rc > 0 && (fds[1].revents & POLLIN)) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
      }
      int status;
      pid_t pid;
      while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_JOBS; i++) {
          struct job *j = g_jobs[i];
          if (j != NULL && j->pid == pid) {
            j->exited = true;
            j->status = status;
            j->exited_at = now_ms();
          }
        }
      }
    }
    now = now_ms();
    for (int i = 0; i < MAX_JOBS; i++) {
      struct job *j = g_jobs[i];
      if (j == NULL || !j->exited) continue;
      bool drained = !j->out.open && !j->err.open && j->report_fd < 0;
      if (drained || j->released || (j->settle && now >= j->exited_at + SETTLE_MS)) {
        /* Whatever is already in the pipes comes along. */
        if (j->out.open) read_output(&j->out);
        if (j->err.open) read_output(&j->err);
        finish(i, !drained);
      }
    }
  }
}
