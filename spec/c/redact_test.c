/* C unit test of the secret registry and redaction (engine/log.c). */
#include <stdio.h>
#include <string.h>

#include "capil.h"

static int failures = 0;

static void expect(lua_State *L, const char *in, const char *want) {
  capil_redact_push(L, in, strlen(in));
  const char *got = lua_tostring(L, -1);
  if (strcmp(got, want) != 0) {
    fprintf(stderr, "redact(\"%s\") = \"%s\", want \"%s\"\n", in, got, want);
    failures++;
  }
  lua_pop(L, 1);
}

int main(void) {
  lua_State *L = luaL_newstate();
  expect(L, "nothing registered", "nothing registered");
  if (capil_secret_add("ab", 2)) { fprintf(stderr, "2-byte secret accepted\n"); failures++; }
  capil_secret_add("pass", 4);
  capil_secret_add("password123", 11);
  capil_secret_add("pass", 4); /* twice: no duplicate */
  expect(L, "password123", "****");
  expect(L, "pass password123 passpass", "**** **** ********");
  expect(L, "", "");
  expect(L, "no match here", "no match here");
  /* embedded NUL bytes are data, not terminators */
  capil_redact_push(L, "a\0pass", 6);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  if (n != 6 || memcmp(s, "a\0****", 6) != 0) { fprintf(stderr, "NUL handling\n"); failures++; }
  lua_close(L);
  if (failures) return 1;
  puts("redact: ok");
  return 0;
}
