"""Invented word lists and code tables the demo feed draws from; no real person or record is in it."""

from __future__ import annotations

from dataclasses import dataclass

FEMALE_GIVEN_NAMES = (
    "Marie",
    "Nathalie",
    "Isabelle",
    "Sylvie",
    "Catherine",
    "Françoise",
    "Monique",
    "Sophie",
    "Camille",
    "Léa",
    "Chloé",
    "Manon",
    "Josiane",
    "Maryse",
    "Léonie",
    "Hélène",
)
MALE_GIVEN_NAMES = (
    "Jean",
    "Pierre",
    "Michel",
    "Philippe",
    "Alain",
    "Nicolas",
    "Christophe",
    "Patrick",
    "Thomas",
    "Lucas",
    "Hugo",
    "Louis",
    "Jocelyn",
    "Fabrice",
    "Gérard",
    "Rémy",
)
FAMILY_NAMES = (
    "Martin",
    "Bernard",
    "Dubois",
    "Durand",
    "Leroy",
    "Moreau",
    "Simon",
    "Laurent",
    "Lefebvre",
    "Garcia",
    "Bertrand",
    "Roux",
    "Vincent",
    "Fournier",
    "Jean-Baptiste",
    "Alexis",
    "Ramassamy",
    "Céleste",
    "Bélizaire",
    "Lambert",
)
STREETS = (
    "rue Victor Hugo",
    "rue de la République",
    "avenue Jean Jaurès",
    "allée des Tilleuls",
    "chemin des Flamboyants",
    "rue des Hibiscus",
    "impasse des Cannes",
    "boulevard Pasteur",
    "rue du Stade",
    "place de l'Église",
)


@dataclass(frozen=True)
class Commune:
    """A French commune: name, postal code and 5-character INSEE (COG) code."""

    name: str
    postal_code: str
    insee: str


GUADELOUPE = (
    Commune("Lamentin", "97129", "97115"),
    Commune("Baie-Mahault", "97122", "97103"),
    Commune("Les Abymes", "97139", "97101"),
    Commune("Pointe-à-Pitre", "97110", "97120"),
    Commune("Petit-Bourg", "97170", "97118"),
    Commune("Sainte-Rose", "97115", "97129"),
)
LYON_AREA = (
    Commune("Lyon 3e Arrondissement", "69003", "69383"),
    Commune("Lyon 7e Arrondissement", "69007", "69387"),
    Commune("Lyon 8e Arrondissement", "69008", "69388"),
    Commune("Villeurbanne", "69100", "69266"),
    Commune("Vénissieux", "69200", "69259"),
    Commune("Bron", "69500", "69029"),
)
#: Places of birth besides the two home areas. A NIR codes a birth abroad as 99 + INSEE country
#: code, so these carry no postal code.
ELSEWHERE = (
    Commune("Paris 14e Arrondissement", "75014", "75114"),
    Commune("Marseille", "13001", "13055"),
    Commune("Lille", "59000", "59350"),
    Commune("Fort-de-France", "97200", "97209"),
    Commune("Maroc", "", "99350"),
    Commune("Algérie", "", "99352"),
    Commune("Portugal", "", "99139"),
)

ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Diagnosis:
    """A problem the feed records, in ICD-10 and in each source's own local code."""

    icd10: str
    display: str
    #: source id → (local code, local label); each software package has its own vocabulary.
    local: dict[str, tuple[str, str]]


DIAGNOSES = {
    "diabetes": Diagnosis(
        "E11.9",
        "Diabète sucré de type 2, sans complication",
        {
            "demo-gp-cabinet-lamentin": ("DT2", "Diabète type 2"),
            "demo-gp-maison-sante-lyon": ("1040", "DNID"),
            "demo-hospital-chu": ("CHU-END-02", "Diabète non insulinodépendant"),
        },
    ),
    "hypertension": Diagnosis(
        "I10",
        "Hypertension essentielle (primitive)",
        {
            "demo-gp-cabinet-lamentin": ("HTA", "Hypertension artérielle"),
            "demo-gp-maison-sante-lyon": ("1100", "HTA essentielle"),
            "demo-hospital-chu": ("CHU-CAR-10", "HTA"),
        },
    ),
    "ckd": Diagnosis(
        "N18.3",
        "Maladie rénale chronique, stade 3",
        {
            "demo-gp-cabinet-lamentin": ("IRC3", "Insuffisance rénale chronique modérée"),
            "demo-gp-maison-sante-lyon": ("1230", "IRC stade 3"),
            "demo-hospital-chu": ("CHU-NEP-03", "MRC stade 3"),
        },
    ),
    "breast_cancer": Diagnosis(
        "C50.9",
        "Tumeur maligne du sein, sans précision",
        {
            "demo-gp-cabinet-lamentin": ("K-SEIN", "Cancer du sein"),
            "demo-gp-maison-sante-lyon": ("2050", "Néoplasie mammaire"),
            "demo-hospital-chu": ("CHU-ONC-50", "Carcinome mammaire"),
        },
    ),
    "lung_cancer": Diagnosis(
        "C34.9",
        "Tumeur maligne des bronches ou du poumon, sans précision",
        {
            "demo-gp-cabinet-lamentin": ("K-POUMON", "Cancer du poumon"),
            "demo-gp-maison-sante-lyon": ("2034", "Néoplasie pulmonaire"),
            "demo-hospital-chu": ("CHU-ONC-34", "Carcinome bronchique"),
        },
    ),
    "dementia": Diagnosis(
        "F03",
        "Démence, sans précision",
        {
            "demo-gp-cabinet-lamentin": ("DEMENCE", "Troubles cognitifs - démence"),
            "demo-gp-maison-sante-lyon": ("3003", "Syndrome démentiel"),
            "demo-hospital-chu": ("CHU-GER-03", "Démence"),
        },
    ),
    "copd": Diagnosis(
        "J44.9",
        "Maladie pulmonaire obstructive chronique, sans précision",
        {
            "demo-gp-cabinet-lamentin": ("BPCO", "BPCO"),
            "demo-gp-maison-sante-lyon": ("1440", "BPCO"),
            "demo-hospital-chu": ("CHU-PNE-44", "BPCO"),
        },
    ),
}


@dataclass(frozen=True)
class LabTest:
    """A test the demo lab reports: LOINC code, the lab's own code, and FHIR category."""

    loinc: str
    display: str
    local_code: str
    category: str


HBA1C_PERCENT = LabTest("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "HBA1C", "laboratory")
HBA1C_IFCC = LabTest(
    "59261-8", "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol", "HBA1C-IFCC", "laboratory"
)
GLUCOSE = LabTest("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "GLY", "laboratory")
CREATININE = LabTest("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "CREA", "laboratory")
BODY_WEIGHT = LabTest("29463-7", "Body weight", "POIDS", "vital-signs")

#: Roles in a CareTeam, from the French health-profession table (TRE-G15).
PROFESSION_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
PHYSICIAN = ("10", "Médecin")
NURSE = ("60", "Infirmier")
