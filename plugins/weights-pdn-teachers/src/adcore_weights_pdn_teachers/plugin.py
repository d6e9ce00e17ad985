"""Entry point module: registers the teacher provider with adcore, lazily (torch loads on first use)."""

from adcore import LazyProvider, hookimpl

from adcore_weights_pdn_teachers.files import shipped_teachers

ADCORE_API = ">=2,<3"


@hookimpl
def adcore_register_resources(register):
    register(
        LazyProvider(
            name="pdn-teachers",
            target="adcore_weights_pdn_teachers.provider:PdnTeachers",
            resource_ids=[f"efficientad:{name}" for name in shipped_teachers()],
        )
    )
