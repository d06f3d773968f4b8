/* ssh.c — capil.core.ssh (being written) */
#include "capil.h"
int luaopen_capil_core_ssh(lua_State *L) {
  lua_newtable(L);
  return 1;
}
