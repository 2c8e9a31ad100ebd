"""fhir.resources' own checks, compiled into pydantic-core validators: the cheap first look at a resource.

Validating with the models costs a Python call chain for every element (each nested model is built by
fhir_core's wrap validator, its ``__init__`` and two model validators): about 1 ms for a demo input,
the largest single cost of ingest (docs/PERFORMANCE.md). Here each model's pydantic-core schema is
taken as it is, field by field, with the same schemas for every primitive (the same patterns, the same
Python validators for dates, decimals and URLs, the same config), and only the parts that call back
into Python for every element are replaced:

- fhir_core's wrap validator of a complex element (which builds the element's model) becomes a
  reference to the element's own compiled schema, so nested elements are checked in Rust;
- a resource-typed element (``contained``, ``Bundle.entry.resource``) is checked by the compiled
  schema of the resource type it names (a union on ``resourceType`` of the types compiled);
- the model validators that check required primitive elements and choice elements (``value[x]``) run
  as one Python function on the element's validated fields, and only for the models that have either;
- every other model validator is kept where it stands (FHIRPrimitiveExtension's, for one).

The result is only ever a *yes*: :func:`models_accept` answers True when the compiled check accepts the
resource, which it does only where the models accept it too. Nothing in it is more lenient: it coerces
what the models coerce, with their own schemas, and where they do more (parse a string of JSON in
place of an object, take ``resource_type`` or an element's ``resourceType``) it refuses. On False the
caller validates with the models, as before, and their verdict and their words stand. So every reject
is still the models' own, with the same details, and the differential tests
(tests/unit/test_fast_validation.py, tests/corpus) hold the two to the same accepts. A library upgrade
that changes a model's schema shape the compiler relies on fails at compile time
(:class:`UnexpectedSchema`), and the models then decide every input.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cache
from typing import Any, cast

from pydantic_core import SchemaValidator, core_schema

from hub.logging import get_logger
from hub.normalise.fhir_model import model_lookup

log = get_logger(__name__)

#: fhir_core's wrap validator of a complex element: builds the element's model (fhir_core/types.py).
_ELEMENT_WRAPPER = "FhirBase.__get_pydantic_core_schema__.<locals>._validate"
#: The model validators replaced: nulls in lists of complex elements (which the compiled schema refuses
#: anyway: a list item is an element's schema, never nullable), and required/choice elements.
_REPLACED_BEFORE = "FHIRAbstractModel.reject_null_complex_elements"
_REPLACED_AFTER = "FHIRAbstractModel.validate_after_model_construction"


#: The schemas of primitive values, shared: a definition each, referenced from every field.
_SHARED_KINDS = frozenset(
    {"str", "int", "bool", "float", "decimal", "date", "datetime", "time", "bytes", "url", "uuid"}
    | {"function-wrap", "function-after", "function-before", "function-plain"}
)


class UnexpectedSchema(Exception):
    """A model's schema is not of the shape this compiler knows: the models decide every input."""


def models_accept(document: dict[str, Any], version: str) -> bool:
    """True when fhir.resources' models of ``version`` would accept ``document``, a resource of a type
    the structure check has found in that version; False when they might not (ask them)."""
    return _version_validator(version).accepts(document)


@cache  # one entry per model class: a fixed set
def element_models(model_class: Any) -> dict[str, Any]:
    """The complex fields of a model, by field name: the model of the element each holds, or
    :data:`RESOURCE` for a resource-typed field (each resource names its own type). Read from the same
    schemas the compiler reads; a primitive field is absent."""
    found: dict[str, Any] = {}
    for name, field in _peel(model_class.__name__, model_class.__pydantic_core_schema__)[0]["fields"].items():
        wrapper = _element_wrapper(field["schema"])
        if wrapper is not None:
            model = _closure(wrapper["function"]["function"])["source_type"].get_model_klass()
            found[name] = RESOURCE if model.__name__ == "Resource" else model
    return found


#: What :func:`element_models` gives for a resource-typed field.
RESOURCE = "Resource"


def _element_wrapper(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The complex element's wrap validator inside a field's schema (under its default, nullable and
    list wrappers), or None for a primitive field."""
    while schema.get("type") in {"default", "nullable", "list"}:
        schema = schema["items_schema"] if schema["type"] == "list" else schema["schema"]
    if (
        schema.get("type") == "function-wrap"
        and _qualname(schema["function"]["function"]) == _ELEMENT_WRAPPER
    ):
        return schema
    return None


#: The union of the resource types compiled so far: the root, and every resource-typed element.
_RESOURCES = "resources"


class _VersionValidator:
    """One validator for the resource types of a version seen so far, rebuilt when an input brings a new
    one. One validator, so that the data types every resource reaches are compiled once (a validator
    per resource type took ~1.7 MB each: 44 MB for the demo's 26 types); built from the types seen, so
    that a worker imports and compiles only the models it reads (all of R4B: +67 MB of imported
    models)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.resource_types: frozenset[str] = frozenset()
        self.validator: SchemaValidator | None = None
        self.broken = False  # a model the compiler does not know: the models decide every input
        # Kept between builds: each model is rewritten once, a new build adds only the new types' models.
        self.compiler = _Compiler()
        self.lock = threading.Lock()

    def accepts(self, document: dict[str, Any]) -> bool:
        if self._validates(document):
            return True
        with self.lock:  # one rebuild at a time, should two threads ever share a version's validator
            unseen = _resource_types(document) - self.resource_types
            new = frozenset(name for name in unseen if _resource_model(self.version, name) is not None)
            if not new or self.broken:
                return False
            self.resource_types |= new
            self._build()
        return self._validates(document)

    def _validates(self, document: dict[str, Any]) -> bool:
        if self.validator is None:
            return False
        try:
            self.validator.validate_python(document)
        except Exception:
            return False
        return True

    def _build(self) -> None:
        try:
            compiler = self.compiler
            union = core_schema.tagged_union_schema(
                {
                    name: compiler.reference(_resource_model(self.version, name))
                    for name in sorted(self.resource_types)
                },
                discriminator="resourceType",
                ref=_RESOURCES,
            )
            definitions = [union, *compiler.compile()]
            root = core_schema.definition_reference_schema(_RESOURCES)
            self.validator = SchemaValidator(core_schema.definitions_schema(root, definitions))
        except UnexpectedSchema as unexpected:
            # Every input of the version is then validated by the models alone: slower, deciding alike.
            log.warning("fhir.first_look_unavailable", fhir_version=self.version, reason=str(unexpected))
            self.validator, self.broken = None, True


@cache
def _version_validator(version: str) -> _VersionValidator:
    return _VersionValidator(version)


def _resource_types(document: Any) -> set[str]:
    """Every ``resourceType`` named in a document, at any depth (without recursion: the structure check
    bounds the depth, and a deep document must not overflow the stack here either)."""
    found: set[str] = set()
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            named = node.get("resourceType")
            if isinstance(named, str):
                found.add(named)
            stack.extend(value for value in node.values() if isinstance(value, dict | list))
        elif isinstance(node, list):
            stack.extend(value for value in node if isinstance(value, dict | list))
    return found


def _resource_model(version: str, resource_type: str) -> Any:
    """The model a resource-typed element's ``resourceType`` makes fhir_core use, when it is a concrete
    resource (fhir_core also takes ``Resource`` or ``DomainResource``: left to the models)."""
    if not resource_type.isalpha():
        return None
    try:
        model_class = model_lookup(version)(resource_type)
    except (KeyError, ValueError, ImportError):
        return None
    if not model_class.has_resource_base() or model_class.__resource_type__ != resource_type:
        return None
    if resource_type in {"Resource", "DomainResource"}:
        return None
    return model_class


def _closure(function: Any) -> dict[str, Any]:
    cells = function.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(function.__code__.co_freevars, cells, strict=True)}


def _qualname(function: Any) -> str:
    return str(getattr(getattr(function, "__func__", function), "__qualname__", ""))


class _Compiler:
    """The schemas of some resource types: their models and every element model they reach, as
    definitions (a resource-typed element references the union of the resource types compiled)."""

    def __init__(self) -> None:
        self.definitions: dict[str, core_schema.CoreSchema | None] = {}
        self.pending: list[tuple[str, Any]] = []
        self.shared: dict[str, str] = {}

    def reference(self, model_class: Any) -> core_schema.CoreSchema:
        name = f"{model_class.__module__}.{model_class.__qualname__}"
        if name not in self.definitions:
            self.definitions[name] = None
            self.pending.append((name, model_class))
        return core_schema.definition_reference_schema(name)

    def compile(self) -> list[core_schema.CoreSchema]:
        while self.pending:
            name, model_class = self.pending.pop()
            self.definitions[name] = self._model(name, model_class)
        return [schema for schema in self.definitions.values() if schema is not None]

    def _element(self, wrapper: dict[str, Any]) -> core_schema.CoreSchema:
        """What replaces fhir_core's wrap validator of a complex element."""
        from fhir_core.types import FhirElementOrResourceBase  # noqa: PLC0415 - with the models

        cells = _closure(wrapper["function"]["function"])
        source_type, base = cells["source_type"], cells["cls"]
        model_class = source_type.get_model_klass()
        if issubclass(base, FhirElementOrResourceBase):
            if model_class.__name__ != "Resource":
                raise UnexpectedSchema(f"an element typed {model_class.__name__} by resource type")
            return core_schema.definition_reference_schema(_RESOURCES)
        return self.reference(model_class)

    def _rewrite(self, schema: dict[str, Any], *, null_items: bool) -> dict[str, Any]:
        """A field's schema with each complex element's wrap validator replaced. ``null_items``: a null
        may stand in a list of complex elements (a primitive list's ``_name`` list, where it keeps the
        places aligned); elsewhere the models refuse it, and so does the compiled schema."""
        kind = schema.get("type")
        if kind == "function-wrap" and _qualname(schema["function"]["function"]) == _ELEMENT_WRAPPER:
            return dict(self._element(schema))
        if kind in {"model", "definitions", "definition-ref", "model-fields", "typed-dict"}:
            raise UnexpectedSchema(f"a field schema of type {kind}")
        if kind == "list" and not null_items and _is_complex(schema["items_schema"]):
            schema = {**schema, "items_schema": _without_nullable(schema["items_schema"])}
        rewritten = dict(schema)
        for key in ("schema", "items_schema"):
            inner = schema.get(key)
            if isinstance(inner, dict):
                rewritten[key] = self._rewrite(inner, null_items=null_items)
        for key in ("choices", "steps"):
            if key in schema:
                rewritten[key] = [
                    self._rewrite(choice, null_items=null_items) if isinstance(choice, dict) else choice
                    for choice in schema[key]
                ]
        return self._shared(rewritten) if kind in _SHARED_KINDS else rewritten

    def _shared(self, schema: dict[str, Any]) -> dict[str, Any]:
        """One definition for each distinct primitive schema, referenced by every field of that type: a
        pattern is compiled once per validator, not once per field (about 2 of the 19 MB the validators
        of the demo feed's and Synthea's resource types take)."""
        key = repr(schema)  # the functions in it are the models' own objects: equal reprs, same schema
        name = self.shared.get(key)
        if name is None:
            name = self.shared[key] = f"primitive-{len(self.shared)}"
            self.definitions[name] = cast("core_schema.CoreSchema", {**schema, "ref": name})
        return dict(core_schema.definition_reference_schema(name))

    def _model(self, name: str, model_class: Any) -> core_schema.CoreSchema:
        """A model's fields as a typed dict, inside the model validators it keeps."""
        schema, config, kept = _peel(name, model_class.__pydantic_core_schema__)
        fields: dict[str, core_schema.TypedDictField] = {}
        for field_name, field in schema["fields"].items():
            field_schema = field["schema"]
            fields[field_name] = core_schema.typed_dict_field(
                self._rewrite(field_schema, null_items=field_name.endswith("__ext")),
                required=field_schema["type"] != "default",
                validation_alias=field.get("validation_alias"),
            )
        if model_class.has_resource_base():
            if "resourceType" in fields:
                raise UnexpectedSchema(f"{name} has a field named resourceType")
            # fhir_core's __init__ takes resourceType out and requires it to name the model's type.
            fields["resourceType"] = core_schema.typed_dict_field(
                core_schema.literal_schema([model_class.__resource_type__]), required=False
            )
        compiled: core_schema.CoreSchema = core_schema.typed_dict_schema(
            fields, extra_behavior="forbid", config=config
        )
        check = _required_and_choice_check(model_class)
        if check is not None:
            compiled = core_schema.no_info_after_validator_function(check, compiled)
        for before in reversed(kept):
            compiled = core_schema.no_info_before_validator_function(before, compiled)
        named: dict[str, Any] = {**compiled, "ref": name}  # the definition the references name
        return cast("core_schema.CoreSchema", named)


def _peel(name: str, schema: dict[str, Any]) -> tuple[dict[str, Any], Any, list[Any]]:
    """A model's ``model-fields`` schema, its config, and the model validators kept (outermost first):
    every one but the two replaced, all of them "before" validators without validation info."""
    config: Any = None
    kept: list[Any] = []
    while schema["type"] != "model-fields":
        kind = schema["type"]
        if kind == "model":
            if schema.get("post_init") or schema.get("root_model"):
                raise UnexpectedSchema(f"{name} has a post_init or is a root model")
            config = schema.get("config")
        elif kind in {"function-before", "function-after"}:
            function = schema["function"]["function"]
            if _qualname(function) not in {_REPLACED_BEFORE, _REPLACED_AFTER}:
                if kind != "function-before" or schema["function"]["type"] != "no-info":
                    raise UnexpectedSchema(f"{name} has a model validator of a kind not compiled")
                kept.append(function)
        else:
            raise UnexpectedSchema(f"{name}'s schema has a {kind} around its fields")
        schema = schema["schema"]
    if schema.get("computed_fields"):
        raise UnexpectedSchema(f"{name} has computed fields")
    return schema, config, kept


def _without_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    while schema.get("type") == "nullable":
        schema = schema["schema"]
    return schema


def _is_complex(items: dict[str, Any]) -> bool:
    return _element_wrapper(items) is not None


def _required_and_choice_check(model_class: Any) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """fhir_core's checks after a model is built (validate_after_model_construction), on the fields
    validated: a required primitive has a value or an extension in its ``_name``; of a choice element's
    fields at most one is set, and one when the element is required."""
    try:  # instance methods returning class constants: called without an instance
        required = model_class.get_required_fields(None)
        groups = model_class.get_one_of_many_fields(None)
    except (AttributeError, TypeError) as changed:
        raise UnexpectedSchema(f"{model_class.__name__}'s required or choice elements") from changed
    if not required and not groups:
        return None
    aliases = model_class.get_alias_mapping() if required else {}
    if any(name not in aliases for name, _ in required):
        raise UnexpectedSchema(f"{model_class.__name__} requires an element it does not name")
    required_fields = tuple((aliases[name], extension) for name, extension in required)
    choices = tuple(
        (tuple(names), model_class.model_fields[names[0]].json_schema_extra["one_of_many_required"] is True)
        for names in groups.values()
    )

    def check(fields: dict[str, Any]) -> dict[str, Any]:
        for name, extension_name in required_fields:
            if fields.get(name) is not None:
                continue
            extension = fields.get(extension_name) if extension_name is not None else None
            if not (isinstance(extension, dict) and extension.get("extension")):
                raise ValueError("a required element is missing")
        for names, must in choices:
            present = sum(1 for name in names if fields.get(name) is not None)
            if present > 1 or (must and present == 0):
                raise ValueError("a choice element is not one of its types")
        return fields

    return check
