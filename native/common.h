/*
 * Shared by the native helpers: one error family, fd/memory cleanup attributes and the
 * one-line JSON report to the TypeScript caller (stdout). Header-only so each helper
 * stays one .c file.
 */
#ifndef ROOTLESS_CRI_COMMON_H
#define ROOTLESS_CRI_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Error family. A failing function records one message (the first failure wins, so the
 * root cause is what the caller sees) and returns -1; callers propagate with TRY.
 * The kind lets TypeScript pick the error class without parsing the message.
 */
static char g_error[1024];
static const char *g_error_kind = "";
static const char *g_error_errno = "";

__attribute__((format(printf, 3, 4), unused)) static void set_error(const char *kind, int errnum,
                                                            const char *fmt, ...) {
  if (g_error[0] != '\0') return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(g_error, sizeof(g_error), fmt, ap);
  va_end(ap);
  if (errnum != 0 && n >= 0 && (size_t)n < sizeof(g_error))
    snprintf(g_error + n, sizeof(g_error) - (size_t)n, ": %s", strerror(errnum));
  g_error_kind = kind;
  /* A failure the layer's own content explains (a path through a file, a dangling
   * symlink, an overlong name) is an invalid archive, not a host problem. */
  if (strcmp(kind, "system") == 0 &&
      (errnum == ENOENT || errnum == ENOTDIR || errnum == ELOOP || errnum == EEXIST ||
       errnum == ENAMETOOLONG || errnum == EXDEV || errnum == EISDIR || errnum == EMLINK))
    g_error_kind = "invalid_archive";
  if (errnum != 0 && strerrorname_np(errnum) != NULL) g_error_errno = strerrorname_np(errnum);
}

#define FAIL_KIND(kind, ...)           \
  do {                                 \
    set_error((kind), 0, __VA_ARGS__); \
    return -1;                         \
  } while (0)
#define FAIL(...) FAIL_KIND("invalid_archive", __VA_ARGS__)
#define FAIL_SYS(...)                        \
  do {                                       \
    set_error("system", errno, __VA_ARGS__); \
    return -1;                               \
  } while (0)
#define TRY(expr)              \
  do {                         \
    if ((expr) < 0) return -1; \
  } while (0)

static inline void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
}
static inline void free_ptr(void *p) { free(*(void **)p); }
#define _cleanup_fd_ __attribute__((cleanup(close_fd)))
#define _cleanup_free_ __attribute__((cleanup(free_ptr)))

/* A JSON string. Bytes outside printable ASCII are escaped one by one: tar names are
 * arbitrary bytes, and a valid JSON line matters more than pretty non-ASCII names. */
static void json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p < 0x20 || *p >= 0x7f)
      fprintf(out, "\\u%04x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

/* {"ok":false,...} on `out`. */
__attribute__((unused)) static void report_failure(FILE *out) {
  fputs("{\"ok\":false,\"kind\":", out);
  json_string(out, g_error_kind[0] != '\0' ? g_error_kind : "system");
  if (g_error_errno[0] != '\0') {
    fputs(",\"errno\":", out);
    json_string(out, g_error_errno);
  }
  fputs(",\"error\":", out);
  json_string(out, g_error[0] != '\0' ? g_error : "unknown error");
  fputs("}\n", out);
  fflush(out);
}

/* {"ok":false,...} on stdout, exit 1 (2 for a usage error). */
__attribute__((noreturn, unused)) static void report_failure_and_exit(int code) {
  report_failure(stdout);
  exit(code);
}

#endif
