/* Compiles: base's own headers. */
#include "runner/base/error.h"
#include "runner/base/util.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
