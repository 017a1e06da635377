/* Must not compile: the guest helper including a backend header. */
#include "provision/backend.h"

int layering_probe(void);
int layering_probe(void)
{
    return 0;
}
