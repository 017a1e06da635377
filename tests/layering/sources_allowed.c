/* Compiles: a source uses the engine and the loop's HTTP server. */
#include "runner/engine/engine.h"
#include "runner/loop/http_server.h"
#include "runner/sources/github.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
