/* Must not compile: the engine including a job source. */
#include "runner/sources/github.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
