/* repl.c — capil.core.repl (being written) */
#include "capil.h"
int luaopen_capil_core_repl(lua_State *L) {
  lua_newtable(L);
  return 1;
}
