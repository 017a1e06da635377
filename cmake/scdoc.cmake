# Renders one scdoc(5) page: cmake -DSCDOC=... -DIN=page.scd -DOUT=page -P scdoc.cmake
# (scdoc reads stdin and writes stdout; a failed run leaves no output behind).
execute_process(COMMAND ${SCDOC} INPUT_FILE ${IN} OUTPUT_FILE ${OUT}.tmp
  RESULT_VARIABLE rc ERROR_VARIABLE msg)
if(NOT rc EQUAL 0)
  file(REMOVE ${OUT}.tmp)
  message(FATAL_ERROR "scdoc ${IN}: ${msg}")
endif()
file(RENAME ${OUT}.tmp ${OUT})
