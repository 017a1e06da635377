/* Minimal XML text helpers for the documents we generate (libvirt XML). */
#ifndef AL_XML_H
#define AL_XML_H

#include "runner/base/buf.h"

/* Appends s with &, <, >, " and ' escaped. Control characters other than
 * tab/newline are refused with -EINVAL (XML 1.0 cannot carry them). */
int al_xml_escape_append(struct al_buf *b, const char *s);

/* Extracts the value of attribute name="..." from the first element of an
 * XML fragment we generated ourselves (values never contain quotes).
 * Returns a new string or NULL when absent. Entities are decoded. */
char *al_xml_attr(const char *xml, const char *name);

/* The text between the first <tag> and the </tag> after it, not decoded: a
 * new string, or NULL when absent (or on ENOMEM). */
char *al_xml_text(const char *xml, const char *tag);

#endif
