"""Package environments as the sandbox use cases see them: where built environments come from
(the EnvironmentStore), how a runtime starts from one or adds packages to a running sandbox (the
EnvironmentRuntime), and which packages the operator allows."""

from __future__ import annotations

from dataclasses import dataclass

from domain.environment import Environment
from domain.errors import PackageNotAllowedError
from usecase.ports import EnvironmentRuntime, EnvironmentStore


@dataclass(frozen=True)
class PackageAllowList:
    """Names allowed in environments, per language (None: any name is allowed).

    Python names are compared in their PEP 503 form, npm names as they are.
    """

    names: frozenset[str] | None = None

    def check(self, environment: Environment) -> None:
        """Raise PackageNotAllowedError naming every package that is not on the list."""
        if self.names is None:
            return
        refused = [name for name in environment.package_names if name not in self.names]
        if refused:
            raise PackageNotAllowedError(
                f"package(s) not on this service's allow-list: {', '.join(refused)}"
            )


@dataclass(frozen=True)
class EnvironmentProvisioning:
    """The optional ports for package environments, wired only on runtimes that support them."""

    store: EnvironmentStore
    runtime: EnvironmentRuntime
    allow_list: PackageAllowList = PackageAllowList()
