/*
** log.c — capil.core.log: the secret registry (values never printed), output
** that is redacted on its way out, and progress reporting for long transfers.
*/
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "capil.h"

/* ====================================================================== */
/* Secrets                                                                */
/* ====================================================================== */

/* Registered secrets, longest first so a secret that contains another is
** masked whole. Guarded by a mutex: transfer threads log too. */
static struct { char *s; size_t len; } *secrets = NULL;
static size_t nsecrets = 0;
static pthread_mutex_t secrets_mu = PTHREAD_MUTEX_INITIALIZER;

#define SECRET_MIN 4
#define MASK "****"

int capil_secret_add(const char *value, size_t len) {
  if (len < SECRET_MIN) return 0;
  pthread_mutex_lock(&secrets_mu);
  for (size_t i = 0; i < nsecrets; i++)
    if (secrets[i].len == len && memcmp(secrets[i].s, value, len) == 0) {
      pthread_mutex_unlock(&secrets_mu);
      return 1;
    }
  void *grown = realloc(secrets, (nsecrets + 1) * sizeof *secrets);
  char *copy = malloc(len);
  if (!grown || !copy) {
    free(copy);
    if (grown) secrets = grown;
    pthread_mutex_unlock(&secrets_mu);
    return 0;
  }
  secrets = grown;
  memcpy(copy, value, len);
  size_t at = nsecrets;
  while (at > 0 && secrets[at - 1].len < len) {
    secrets[at] = secrets[at - 1];
    at--;
  }
  secrets[at].s = copy;
  secrets[at].len = len;
  nsecrets++;
  pthread_mutex_unlock(&secrets_mu);
  return 1;
}

/* Length of the secret starting at s (of n bytes left), or 0. Caller holds the lock. */
static size_t secret_at(const char *s, size_t n) {
  for (size_t i = 0; i < nsecrets; i++)
    if (secrets[i].len <= n && memcmp(s, secrets[i].s, secrets[i].len) == 0)
      return secrets[i].len;
  return 0;
}

/* Length of the userinfo password of a URL whose "://" starts at s (of n
** bytes left): in "scheme://user:PASSWORD@host" the PASSWORD is masked
** whatever its name, so a proxy or mirror URL's credentials never print.
** Sets *skip to the bytes before the password ("://user:"). */
static size_t url_password_at(const char *s, size_t n, size_t *skip) {
  if (n < 3 || memcmp(s, "://", 3) != 0) return 0;
  size_t colon = 0, j = 3;
  for (; j < n; j++) {
    unsigned char c = (unsigned char)s[j];
    if (c == '@') break;
    if (c <= ' ' || c == '/' || c == '?' || c == '#' || c == '"' || c == '\'' || c == '<' || c == '>' ||
        c == '\\' || c == 0x7f)
      return 0;
    if (c == ':' && !colon) colon = j;
  }
  if (j >= n || !colon || j == colon + 1) return 0;
  *skip = colon + 1;
  return j - colon - 1;
}

/* Where filtered text goes: a Lua buffer or a FILE. */
typedef struct {
  luaL_Buffer *b;
  FILE *f;
} Sink;

static void emit(Sink *k, const char *s, size_t n) {
  if (!n) return;
  if (k->b) luaL_addlstring(k->b, s, n);
  else fwrite(s, 1, n, k->f);
}

/* A control character from untrusted text (a recipe's, a server's) must
** not reach a terminal as is: ESC would let it rewrite the screen or the
** window title. C0 but newline and tab, DEL, and C1 (as UTF-8) show as \xNN.
** Returns the bytes taken at s (0: not a control character). */
static size_t control_at(const char *s, size_t n, char out[16]) {
  unsigned char c = (unsigned char)s[0];
  if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
    snprintf(out, 16, "\\x%02x", c);
    return 1;
  }
  if (c == 0xc2 && n > 1 && (unsigned char)s[1] >= 0x80 && (unsigned char)s[1] <= 0x9f) {
    snprintf(out, 16, "\\u%04x", (unsigned char)s[1]);
    return 2;
  }
  return 0;
}

/* The one filter every printed byte goes through: registered secrets and
** URL passwords become "****"; with `escape`, control characters are
** shown escaped. */
static void filter(Sink *k, const char *s, size_t len, int escape) {
  size_t i = 0, start = 0;
  char esc[16];
  pthread_mutex_lock(&secrets_mu);
  while (i < len) {
    size_t m = nsecrets ? secret_at(s + i, len - i) : 0, skip = 0, c;
    if (m) {
      emit(k, s + start, i - start);
      emit(k, MASK, strlen(MASK));
      i += m;
      start = i;
    } else if (s[i] == ':' && (m = url_password_at(s + i, len - i, &skip)) != 0) {
      emit(k, s + start, i + skip - start);
      emit(k, MASK, strlen(MASK));
      i += skip + m;
      start = i;
    } else if (escape && (c = control_at(s + i, len - i, esc)) != 0) {
      emit(k, s + start, i - start);
      emit(k, esc, strlen(esc));
      i += c;
      start = i;
    } else {
      i++;
    }
  }
  pthread_mutex_unlock(&secrets_mu);
  emit(k, s + start, len - start);
}

void capil_redact_push(lua_State *L, const char *s, size_t len) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  Sink k = {&b, NULL};
  filter(&k, s, len, 0);
  luaL_pushresult(&b);
}

/* Writes s to f redacted and, as f is where messages go (stderr), with its
** control characters escaped. */
void capil_redact_fputs(const char *s, FILE *f) {
  if (!s) return;
  Sink k = {NULL, f};
  filter(&k, s, strlen(s), 1);
}

/* ====================================================================== */
/* Output settings                                                        */
/* ====================================================================== */

enum { OUT_TEXT, OUT_JSON };
static int out_quiet = 0;
static int out_format = OUT_TEXT;
static int out_color = 0; /* colour on stderr: a terminal and no NO_COLOR (decided in Lua) */
/* A progress bar currently drawn on stderr: log lines clear it first. */
static int bar_drawn = 0;

static void clear_bar(void) {
  if (bar_drawn) {
    fputs("\r\033[K", stderr);
    bar_drawn = 0;
  }
}

/* ====================================================================== */
/* Progress                                                               */
/* ====================================================================== */

#define PROGRESS_MT "capil.sys.log.Progress"

enum { PMODE_NONE, PMODE_BAR, PMODE_LINE };

struct capil_progress {
  char label[128];
  uint64_t total, done;
  uint64_t base;        /* bytes already there at the start (a resumed file): not in the rate */
  int based;
  double start, last_draw;
  double interval;      /* seconds between plain lines */
  int mode, closed;
  int started;          /* the work reported a size or progress: it began */
};

static void human_bytes(char *buf, size_t n, double v) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (v >= 1024 && i < 4) { v /= 1024; i++; }
  if (i == 0) snprintf(buf, n, "%.0f %s", v, u[i]);
  else snprintf(buf, n, "%.1f %s", v, u[i]);
}

static void human_eta(char *buf, size_t n, double s) {
  if (s < 0 || s > 99 * 3600) { snprintf(buf, n, "--:--"); return; }
  int t = (int)(s + 0.5);
  if (t >= 3600) snprintf(buf, n, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, n, "%02d:%02d", t / 60, t % 60);
}

/* Draws the progress state; `final` marks the closing draw. */
static void progress_draw(struct capil_progress *p, int final) {
  double now = capil_now();
  double el = now - p->start;
  uint64_t fresh = p->done > p->base ? p->done - p->base : 0;
  double rate = el > 0 ? (double)fresh / el : 0;
  char done[32], total[32], rt[32], eta[32];
  human_bytes(done, sizeof done, (double)p->done);
  human_bytes(total, sizeof total, (double)p->total);
  human_bytes(rt, sizeof rt, rate);
  human_eta(eta, sizeof eta,
            p->total && rate > 0 ? (double)(p->total - (p->done < p->total ? p->done : p->total)) / rate : -1);
  int pct = p->total ? (int)(100.0 * (double)p->done / (double)p->total) : -1;
  if (pct > 100) pct = 100;
  if (out_format == OUT_JSON) {
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr,
            "{\"time\":\"%s\",\"level\":\"info\",\"msg\":\"%s: %s%s%s, %s/s\",\"event\":\"progress\","
            "\"label\":\"%s\",\"bytes\":%llu,\"total\":%llu,\"rate\":%.0f,\"elapsed\":%.1f%s}\n",
            ts, p->label, done, p->total ? " of " : "", p->total ? total : "", rt,
            p->label, (unsigned long long)p->done, (unsigned long long)p->total,
            rate, el, final ? ",\"done\":true" : "");
  } else if (p->mode == PMODE_BAR && !final) {
    char bar[31];
    int fill = pct >= 0 ? pct * 30 / 100 : 0;
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    if (pct >= 0)
      fprintf(stderr, "\r\033[K%s [%s] %3d%% %s/%s %s/s ETA %s", p->label, bar, pct,
              done, total, rt, eta);
    else
      fprintf(stderr, "\r\033[K%s %s %s/s", p->label, done, rt);
    bar_drawn = 1;
  } else {
    clear_bar();
    if (final) {
      char took[32];
      human_eta(took, sizeof took, el);
      fprintf(stderr, "%s: %s in %s, %s/s\n", p->label, done, took, rt);
    } else if (pct >= 0) {
      fprintf(stderr, "%s: %3d%% %s of %s, %s/s, ETA %s\n", p->label, pct, done,
              total, rt, eta);
    } else {
      fprintf(stderr, "%s: %s, %s/s\n", p->label, done, rt);
    }
  }
  fflush(stderr);
  p->last_draw = now;
}

struct capil_progress *capil_progress_opt(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return NULL;
  struct capil_progress *p = luaL_checkudata(L, idx, PROGRESS_MT);
  return p->closed ? NULL : p;
}

void capil_progress_total(struct capil_progress *p, uint64_t total) {
  if (!p) return;
  p->total = total;
  p->started = 1;
}

/* Bytes already present when the transfer starts (a resumed download): they
** count in the done and the percentage, not in the rate. The first call wins. */
void capil_progress_base(struct capil_progress *p, uint64_t base) {
  if (!p || p->based) return;
  p->base = base;
  p->based = 1;
}

void capil_progress_update(struct capil_progress *p, uint64_t done) {
  if (!p || p->closed || p->mode == PMODE_NONE) return;
  p->started = 1;
  if (!p->based) capil_progress_base(p, done);
  p->done = done;
  double now = capil_now();
  double every = p->mode == PMODE_BAR && out_format == OUT_TEXT ? 0.1 : p->interval;
  if (now - p->last_draw >= every) progress_draw(p, 0);
}

static void progress_finish(struct capil_progress *p) {
  if (p->closed) return;
  p->closed = 1;
  if (p->mode == PMODE_NONE) return;
  if (p->mode == PMODE_BAR && out_format == OUT_TEXT) clear_bar();
  /* work that never began (its source could not be opened) gets no
  ** "0 B in 00:00" line before its error */
  if (p->started) progress_draw(p, 1);
}

/* log.progress{label=, total=, mode="auto"|"bar"|"line"|"none", interval=} */
static int l_progress(lua_State *L) {
  static const char *const opts[] = {"label", "total", "mode", "interval", NULL};
  capil_check_options(L, 1, "log.progress", opts);
  const char *label = capil_opt_string(L, 1, "log.progress", "label", "transfer", NULL);
  lua_Integer total = capil_opt_integer(L, 1, "log.progress", "total", 0);
  const char *mode = capil_opt_string(L, 1, "log.progress", "mode", "auto", NULL);
  double interval = capil_opt_number(L, 1, "log.progress", "interval", 5.0);
  struct capil_progress *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  snprintf(p->label, sizeof p->label, "%s", label);
  for (char *c = p->label; *c; c++) if (*c == '"' || *c == '\\' || (unsigned char)*c < 32) *c = '_';
  p->total = total > 0 ? (uint64_t)total : 0;
  p->start = capil_now();
  p->interval = interval > 0 ? interval : 5.0;
  if (out_quiet || strcmp(mode, "none") == 0) p->mode = PMODE_NONE;
  else if (strcmp(mode, "bar") == 0) p->mode = PMODE_BAR;
  else if (strcmp(mode, "line") == 0) p->mode = PMODE_LINE;
  else if (strcmp(mode, "auto") == 0) p->mode = isatty(2) ? PMODE_BAR : PMODE_LINE;
  else return luaL_argerror(L, 1, "mode must be auto, bar, line or none");
  p->last_draw = p->mode == PMODE_LINE ? p->start : 0;
  luaL_setmetatable(L, PROGRESS_MT);
  return 1;
}

static struct capil_progress *check_progress(lua_State *L) {
  return luaL_checkudata(L, 1, PROGRESS_MT);
}

static int p_update(lua_State *L) {
  struct capil_progress *p = check_progress(L);
  lua_Integer done = luaL_checkinteger(L, 2);
  if (!lua_isnoneornil(L, 3)) p->total = (uint64_t)luaL_checkinteger(L, 3);
  capil_progress_update(p, done < 0 ? 0 : (uint64_t)done);
  return 0;
}

static int p_close(lua_State *L) {
  progress_finish(check_progress(L));
  return 0;
}

static int p_gc(lua_State *L) {
  struct capil_progress *p = check_progress(L);
  /* garbage collection closes silently: no closing line from a lost handle */
  if (!p->closed && p->mode == PMODE_BAR && out_format == OUT_TEXT) clear_bar();
  p->closed = 1;
  return 0;
}

static int p_fields(lua_State *L) {
  struct capil_progress *p = check_progress(L);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)p->done); lua_setfield(L, -2, "done");
  lua_pushinteger(L, (lua_Integer)p->total); lua_setfield(L, -2, "total");
  lua_pushstring(L, p->mode == PMODE_BAR ? "bar" : p->mode == PMODE_LINE ? "line" : "none");
  lua_setfield(L, -2, "mode");
  lua_pushboolean(L, p->closed); lua_setfield(L, -2, "closed");
  return 1;
}

/* ====================================================================== */
/* Module functions                                                       */
/* ====================================================================== */

/* log.secret(value) -> true if registered (values under 4 bytes are not) */
static int l_secret(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_pushboolean(L, capil_secret_add(s, len));
  return 1;
}

/* log.redact(s) -> s with every secret replaced by "****" */
static int l_redact(lua_State *L) {
  size_t len;
  const char *s = luaL_tolstring(L, 1, &len);
  capil_redact_push(L, s, len);
  return 1;
}

/* log.write(s [, fd]) — writes s, redacted and with its control characters
** escaped, to stderr (or fd 1), after clearing a drawn progress bar. */
static int l_write(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int fd = (int)luaL_optinteger(L, 2, 2);
  luaL_argcheck(L, fd == 1 || fd == 2, 2, "must be 1 or 2");
  /* messages (stderr) are always escaped; results (stdout) when a
  ** terminal shows them, so a redirected file keeps its bytes */
  int escape = fd == 2 || isatty(1);
  clear_bar();
  FILE *f = fd == 1 ? stdout : stderr;
  Sink k = {NULL, f};
  filter(&k, s, len, escape);
  fflush(f);
  return 0;
}

/* log.control(seq) — writes a terminal control sequence (cursor moves of a
** status display) to stderr as is, only when stderr is a terminal. The one
** way escape sequences reach it: log.write escapes them. */
static int l_control(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (!isatty(2)) return 0;
  fwrite(s, 1, len, stderr);
  fflush(stderr);
  return 0;
}

/* log.isatty(fd) -> boolean */
static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* Prints the error that ends the process: "capil: message" (red on a
** colour terminal), or one JSON record with --log-format json; redacted. */
void capil_log_final_error(lua_State *L, const char *msg) {
  clear_bar();
  if (out_format != OUT_JSON) {
    if (out_color) fputs("\033[1;31m", stderr);
    capil_redact_fputs("capil: ", stderr);
    if (out_color) fputs("\033[0m", stderr);
    capil_redact_fputs(msg, stderr);
    fputc('\n', stderr);
    return;
  }
  capil_redact_push(L, msg, strlen(msg));
  size_t len;
  const char *r = lua_tolstring(L, -1, &len);
  /* a traceback goes in its own field */
  const char *tb = strstr(r, "\nstack traceback:");
  size_t mlen = tb ? (size_t)(tb - r) : len;
  char ts[32];
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  fprintf(stderr, "{\"time\":\"%s\",\"level\":\"error\",\"msg\":\"", ts);
  for (int part = 0; part < (tb ? 2 : 1); part++) {
    const char *s = part ? tb + 1 : r;
    size_t n = part ? len - mlen - 1 : mlen;
    if (part) fputs("\",\"traceback\":\"", stderr);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)s[i];
      if (c == '"' || c == '\\') { fputc('\\', stderr); fputc(c, stderr); }
      else if (c == '\n') fputs("\\n", stderr);
      else if (c == '\t') fputs("\\t", stderr);
      else if (c < 0x20 || c == 0x7f) fprintf(stderr, "\\u%04x", c);
      else fputc(c, stderr);
    }
  }
  fputs("\",\"final\":true}\n", stderr);
  fflush(stderr);
  lua_pop(L, 1);
}

/* log.configure{quiet=, format="text"|"json", color=} — what the C side needs to know */
static int l_configure(lua_State *L) {
  static const char *const opts[] = {"quiet", "format", "color", NULL};
  capil_check_options(L, 1, "log.configure", opts);
  out_quiet = capil_opt_boolean(L, 1, "log.configure", "quiet", out_quiet);
  out_color = capil_opt_boolean(L, 1, "log.configure", "color", out_color);
  const char *f = capil_opt_string(L, 1, "log.configure", "format", NULL, NULL);
  if (f) {
    if (strcmp(f, "text") == 0) out_format = OUT_TEXT;
    else if (strcmp(f, "json") == 0) out_format = OUT_JSON;
    else return luaL_error(L, "log.configure: format must be text or json, got '%s'", f);
  }
  return 0;
}

static const luaL_Reg funcs[] = {
  {"secret", l_secret},
  {"redact", l_redact},
  {"write", l_write},
  {"control", l_control},
  {"isatty", l_isatty},
  {"configure", l_configure},
  {"progress", l_progress},
  {NULL, NULL}
};

static const luaL_Reg progress_methods[] = {
  {"update", p_update},
  {"close", p_close},
  {"state", p_fields},
  {NULL, NULL}
};

static const luaL_Reg progress_meta[] = {
  {"__gc", p_gc},
  {"__close", p_close},
  {"__index", NULL},
  {NULL, NULL}
};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, PROGRESS_MT);
  luaL_setfuncs(L, progress_meta, 0);
  luaL_newlibtable(L, progress_methods);
  luaL_setfuncs(L, progress_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int luaopen_capil_core_log(lua_State *L) {
  create_meta(L);
  luaL_newlib(L, funcs);
  return 1;
}
