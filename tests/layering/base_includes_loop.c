/* Must not compile: base including a header of a layer above it. */
#include "runner/loop/work.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
