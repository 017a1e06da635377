/* Compiles: what a backend may include (the control for the probes above). */
#include "provision/backend.h"
#include "provision/proto/proto.h"
#include "runner/base/util.h"
#include "runner/loop/work.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
