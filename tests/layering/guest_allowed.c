/* Compiles: the guest helper's own headers, base's and the frame format's. */
#include "provision/guest/job.h"
#include "provision/proto/proto.h"
#include "runner/base/error.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
