"""mlserve: the whole serving stack as components, driven by validated stack config."""

import pulumi

from components import settings as settings_module

settings = settings_module.load()
pulumi.export("stack", settings.stack)
