# Golden images and the accelerator probe. Included from tests/CMakeLists.txt.
al_test(test_sha256 unit/test_sha256.c LABELS unit VALGRIND)
al_test(test_apt_sources unit/test_apt_sources.c LABELS unit VALGRIND)
al_test(test_packages unit/test_packages.c LABELS unit VALGRIND)
al_test(test_recipe unit/test_recipe.c LABELS unit VALGRIND)
al_test(test_catalog unit/test_catalog.c LABELS unit VALGRIND)
al_test(test_image_sweep unit/test_image_sweep.c LABELS unit VALGRIND)
al_test(test_inuse unit/test_inuse.c LABELS unit VALGRIND)
al_test(test_accel unit/test_accel.c LABELS unit VALGRIND)

# The CLI on bad input (unknown recipe, missing tools, no space, in use,
# SIGINT during a build). Needs root for the tmpfs and the bootstrap.
add_test(NAME image_cli COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/scripts/image_cli.sh $<TARGET_FILE:agentlab>)
set_tests_properties(image_cli PROPERTIES LABELS "integration" TIMEOUT 300 SKIP_RETURN_CODE 77)

# Builds or reuses the debian-12 image in ${CMAKE_BINARY_DIR}/test-state (shared
# with other tests through AL_TEST_STATE_DIR) and boots it under libvirt.
al_test(test_image_boot integration/test_image_boot.c LABELS integration slow TIMEOUT 2400)
set_property(TEST test_image_boot APPEND PROPERTY ENVIRONMENT
  "AL_AGENTLAB=$<TARGET_FILE:agentlab>;AL_TEST_STATE_DIR=${CMAKE_BINARY_DIR}/test-state")
set_tests_properties(test_image_boot PROPERTIES RUN_SERIAL ON SKIP_RETURN_CODE 77)
