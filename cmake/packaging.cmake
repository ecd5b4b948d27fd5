# `make package`: build/attnserve_<version>_<arch>.deb with attnd, attn, the
# systemd unit (deploy/systemd/attnd.service) and its flags file
# /etc/default/attnd (a conffile). Depends is computed by dpkg-shlibdeps from
# the libraries the two binaries link to, so `apt-get install ./attnserve*.deb`
# pulls them in. Only the `runtime` component is packaged (the SDK is for
# `cmake --install`). The unit and /etc/default/attnd are left out of a plain
# `cmake --install` (EXCLUDE_FROM_ALL): a prefix install must not write /etc.
install(FILES ${CMAKE_SOURCE_DIR}/deploy/systemd/attnd.service
        DESTINATION lib/systemd/system COMPONENT runtime EXCLUDE_FROM_ALL)
install(FILES ${CMAKE_SOURCE_DIR}/deploy/systemd/attnd.default
        DESTINATION /etc/default RENAME attnd COMPONENT runtime EXCLUDE_FROM_ALL)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME attnserve)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "attnserve maintainers <attnserve@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "attention-serving gRPC microservice: multi-head attention and positional encodings")
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_CMAKE_PROJECTS "${CMAKE_BINARY_DIR};attnserve;runtime;/")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "attnd serves Encode, Attend and AttendStream over gRPC for eight positional methods\n(none, sinusoidal, learned, RoPE, Transformer-XL, Shaw, ALiBi, DA-Transformer);\nattn is its command-line client. A hardened systemd unit is included.")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_SOURCE_DIR}/deploy/systemd/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
