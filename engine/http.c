/* http.c — capil.core.http (being written) */
#include "capil.h"
int luaopen_capil_core_http(lua_State *L) {
  lua_newtable(L);
  return 1;
}
