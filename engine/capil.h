/*
** capil.h — what the engine's C files share: the error triple, option-table
** checking, the interrupt flag, the secret registry and progress reporting.
*/
#ifndef CAPIL_H
#define CAPIL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* ---------------------------------------------------------------------- */
/* Module table and embedded Lua library (generated at build time)         */
/* ---------------------------------------------------------------------- */

extern const luaL_Reg capil_core_modules[];

struct capil_embedded {
  const char *module;   /* "capil.sys.http" */
  const char *path;     /* "lua/capil/sys/http.lua", for chunk names */
  const char *data;
  size_t size;
};
extern const struct capil_embedded capil_embedded_lua[];
/* recipes/ and cloudinit/ (module NULL; path "recipes/ubuntu-2004.lua"),
** ended by an entry whose path is NULL */
extern const struct capil_embedded capil_embedded_data[];

/* ---------------------------------------------------------------------- */
/* Errors                                                                  */
/* ---------------------------------------------------------------------- */

/*
** A failure of the world: pushes nil, the formatted message and the stable
** code token ("ETIMEDOUT", "HTTP_404", "SSH_AUTH"...) and returns 3, so a
** C function ends with (printf formats, not lua_pushfstring's) `return capil_fail(L, "ECONNREFUSED", "http.request: %s: %s", url, why);`
*/
int capil_fail(lua_State *L, const char *code, const char *fmt, ...);

/* capil_fail with strerror(err) appended as ": <reason>" and a code from errno. */
int capil_fail_errno(lua_State *L, int err, const char *fmt, ...);

/* Stable code token for an errno value ("ENOENT", "EACCES"...). */
const char *capil_errno_code(int err);

/* ---------------------------------------------------------------------- */
/* Option tables                                                           */
/* ---------------------------------------------------------------------- */

/*
** Raises (misuse) unless the value at idx is a table whose keys are all in
** the NULL-terminated list `allowed`: "http.request: unknown option 'tmeout'".
*/
void capil_check_options(lua_State *L, int idx, const char *fn,
                         const char *const allowed[]);

/* Typed getters for option fields; nil or absent gives the default, a wrong
** type raises naming the function and the field. Strings stay valid while the
** table lives. */
const char *capil_opt_string(lua_State *L, int idx, const char *fn,
                             const char *key, const char *def, size_t *len);
lua_Integer capil_opt_integer(lua_State *L, int idx, const char *fn,
                              const char *key, lua_Integer def);
lua_Number capil_opt_number(lua_State *L, int idx, const char *fn,
                            const char *key, lua_Number def);
int capil_opt_boolean(lua_State *L, int idx, const char *fn,
                      const char *key, int def);
/* Pushes the field (any type) and returns its type; the caller pops it. */
int capil_opt_field(lua_State *L, int idx, const char *key);

/* ---------------------------------------------------------------------- */
/* Interruption (Ctrl-C, SIGTERM)                                          */
/* ---------------------------------------------------------------------- */

/* The signal number that asked capil to stop (SIGINT/SIGTERM), or 0. Blocking
** C loops poll it and give up with capil_fail(L, "EINTR", "...: interrupted"). */
extern volatile sig_atomic_t capil_stop_signal;
int capil_interrupted(void);

/* Current time, monotonic, in seconds. */
double capil_now(void);

/* ---------------------------------------------------------------------- */
/* Secrets (engine/log.c)                                                  */
/* ---------------------------------------------------------------------- */

/* Registers a value that must never appear in output; values shorter than
** 4 bytes are refused (they would mask too much); returns 0 then. */
int capil_secret_add(const char *value, size_t len);

/* Pushes `s` with every registered secret replaced by "****". */
void capil_redact_push(lua_State *L, const char *s, size_t len);

/* Writes `s` (redacted) to a stdio stream: for the host's own messages. */
void capil_redact_fputs(const char *s, FILE *f);
void capil_log_final_error(lua_State *L, const char *msg);

/* ---------------------------------------------------------------------- */
/* Progress (engine/log.c)                                                 */
/* ---------------------------------------------------------------------- */

/* A progress reporter for long byte transfers: a bar with bytes, rate and ETA
** on a terminal, a plain line every few seconds otherwise, nothing in quiet
** mode. Driven from C (curl, sftp, tar loops) without calling into Lua. */
struct capil_progress;
/* Returns the progress userdata at idx, or NULL when idx is nil/absent. */
struct capil_progress *capil_progress_opt(lua_State *L, int idx);
void capil_progress_total(struct capil_progress *p, uint64_t total);
void capil_progress_update(struct capil_progress *p, uint64_t done);
void capil_progress_base(struct capil_progress *p, uint64_t base);

#endif
