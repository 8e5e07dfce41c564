# Keep this file to one line of work: twistd imports every plugin module while it
# builds its command list, before --reactor is applied, so nothing here may import
# a reactor (see akoutpost.tap for the real entry point).
from twisted.application.service import ServiceMaker

akoutpost = ServiceMaker(
    "akoutpost", "akoutpost.tap", "authentik-style proxy outposts (OpenID Connect login)", "akoutpost"
)
