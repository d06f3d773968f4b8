/* host.h — the Lua state's life cycle, used by main.c and repl.c. */
#ifndef CAPIL_HOST_H
#define CAPIL_HOST_H
#include "capil.h"

lua_State *capil_host_new(void);
void capil_host_signals(lua_State *L);
void capil_host_clear_interrupt(lua_State *L);
void capil_host_cleanup(lua_State *L, const char *reason);

#endif
