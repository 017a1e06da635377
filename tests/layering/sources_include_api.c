/* Must not compile: a job source including the control API. */
#include "runner/api/api.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
