/* Must not compile: a backend (provision layer) including an engine header. */
#include "runner/engine/engine.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
