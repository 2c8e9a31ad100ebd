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
#: The south of Basse-Terre island, around the prefecture.
BASSE_TERRE_AREA = (
    Commune("Basse-Terre", "97100", "97105"),
    Commune("Saint-Claude", "97120", "97124"),
    Commune("Gourbeyre", "97113", "97109"),
    Commune("Baillif", "97123", "97104"),
    Commune("Trois-Rivières", "97114", "97132"),
    Commune("Vieux-Habitants", "97119", "97134"),
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

# The demo sources, by id: each software package has its own vocabulary, keyed by these below.
LAMENTIN = "demo-gp-cabinet-lamentin"
LYON = "demo-gp-maison-sante-lyon"
BASSE_TERRE = "demo-gp-cabinet-basse-terre"
CHU = "demo-hospital-chu"
CHU_PAP = "demo-hospital-chu-pointe-a-pitre"
LAB = "demo-lab-bio"


@dataclass(frozen=True)
class Diagnosis:
    """A problem the feed records, in ICD-10, in SNOMED CT and in each source's own local code."""

    icd10: str
    display: str
    snomed: str
    snomed_display: str
    #: source id → (local code, local label); each software package has its own vocabulary.
    local: dict[str, tuple[str, str]]


#: Long-term problems, found and followed by GPs and hospitals alike.
DIAGNOSES = {
    "diabetes": Diagnosis(
        "E11.9",
        "Diabète sucré de type 2, sans complication",
        "44054006",
        "Diabetes mellitus type 2",
        {
            LAMENTIN: ("DT2", "Diabète type 2"),
            LYON: ("1040", "DNID"),
            BASSE_TERRE: ("TH0250", "Diabète de type 2"),
            CHU: ("CHU-END-02", "Diabète non insulinodépendant"),
            CHU_PAP: ("D-END-110", "Diabète type 2 non insulino-requérant"),
        },
    ),
    "hypertension": Diagnosis(
        "I10",
        "Hypertension essentielle (primitive)",
        "38341003",
        "Hypertensive disorder, systemic arterial",
        {
            LAMENTIN: ("HTA", "Hypertension artérielle"),
            LYON: ("1100", "HTA essentielle"),
            BASSE_TERRE: ("TH0401", "Hypertension artérielle"),
            CHU: ("CHU-CAR-10", "HTA"),
            CHU_PAP: ("D-CAR-010", "Hypertension artérielle"),
        },
    ),
    "ckd": Diagnosis(
        "N18.3",
        "Maladie rénale chronique, stade 3",
        "433144002",
        "Chronic kidney disease stage 3",
        {
            LAMENTIN: ("IRC3", "Insuffisance rénale chronique modérée"),
            LYON: ("1230", "IRC stade 3"),
            BASSE_TERRE: ("TH0585", "Maladie rénale chronique stade 3"),
            CHU: ("CHU-NEP-03", "MRC stade 3"),
            CHU_PAP: ("D-NEP-183", "Insuffisance rénale chronique stade 3"),
        },
    ),
    "breast_cancer": Diagnosis(
        "C50.9",
        "Tumeur maligne du sein, sans précision",
        "254837009",
        "Malignant neoplasm of breast",
        {
            LAMENTIN: ("K-SEIN", "Cancer du sein"),
            LYON: ("2050", "Néoplasie mammaire"),
            BASSE_TERRE: ("TH0174", "Cancer du sein"),
            CHU: ("CHU-ONC-50", "Carcinome mammaire"),
            CHU_PAP: ("D-ONC-509", "Néoplasie du sein"),
        },
    ),
    "lung_cancer": Diagnosis(
        "C34.9",
        "Tumeur maligne des bronches ou du poumon, sans précision",
        "93880001",
        "Primary malignant neoplasm of lung",
        {
            LAMENTIN: ("K-POUMON", "Cancer du poumon"),
            LYON: ("2034", "Néoplasie pulmonaire"),
            BASSE_TERRE: ("TH0162", "Cancer bronchopulmonaire"),
            CHU: ("CHU-ONC-34", "Carcinome bronchique"),
            CHU_PAP: ("D-ONC-349", "Néoplasie bronchopulmonaire"),
        },
    ),
    "dementia": Diagnosis(
        "F03",
        "Démence, sans précision",
        "52448006",
        "Dementia",
        {
            LAMENTIN: ("DEMENCE", "Troubles cognitifs - démence"),
            LYON: ("3003", "Syndrome démentiel"),
            BASSE_TERRE: ("TH0290", "Démence"),
            CHU: ("CHU-GER-03", "Démence"),
            CHU_PAP: ("D-GER-003", "Syndrome démentiel"),
        },
    ),
    "copd": Diagnosis(
        "J44.9",
        "Maladie pulmonaire obstructive chronique, sans précision",
        "13645005",
        "Chronic obstructive lung disease",
        {
            LAMENTIN: ("BPCO", "BPCO"),
            LYON: ("1440", "BPCO"),
            BASSE_TERRE: ("TH0496", "Bronchopneumopathie chronique obstructive"),
            CHU: ("CHU-PNE-44", "BPCO"),
            CHU_PAP: ("D-PNE-449", "BPCO"),
        },
    ),
}

#: Why a patient comes to the emergency department; only the hospitals code these.
EMERGENCY_DIAGNOSES = {
    "hypoglycaemia": Diagnosis(
        "E16.2",
        "Hypoglycémie, sans précision",
        "302866003",
        "Hypoglycemia",
        {CHU: ("CHU-URG-162", "Hypoglycémie"), CHU_PAP: ("D-URG-E162", "Hypoglycémie")},
    ),
    "syncope": Diagnosis(
        "R55",
        "Syncope et collapsus",
        "271594007",
        "Syncope",
        {CHU: ("CHU-URG-55", "Malaise avec perte de connaissance"), CHU_PAP: ("D-URG-R55", "Syncope")},
    ),
    "chest_pain": Diagnosis(
        "R07.4",
        "Douleur thoracique, sans précision",
        "29857009",
        "Chest pain",
        {CHU: ("CHU-URG-074", "Douleur thoracique"), CHU_PAP: ("D-URG-R074", "Douleur thoracique")},
    ),
    "pneumonia": Diagnosis(
        "J18.9",
        "Pneumopathie, sans précision",
        "233604007",
        "Pneumonia",
        {CHU: ("CHU-URG-189", "Pneumopathie"), CHU_PAP: ("D-URG-J189", "Pneumopathie infectieuse")},
    ),
    # Endemic in the French Antilles: only the Guadeloupe hospital has a code for it.
    "dengue": Diagnosis(
        "A90",
        "Dengue [dengue classique]",
        "38362002",
        "Dengue",
        {CHU_PAP: ("D-URG-A90", "Dengue")},
    ),
}


@dataclass(frozen=True)
class LabTest:
    """A measurement: LOINC code, FHIR category, and the local code each source that reports it uses."""

    loinc: str
    display: str
    category: str
    #: source id → (local code, local label).
    local: dict[str, tuple[str, str]]

    def local_code(self, source_id: str) -> tuple[str, str]:
        """The source's own code and label for this test; KeyError when it does not report it."""
        return self.local[source_id]


# The lab's codes come without labels in its messages (only the code), as its exports do.
HBA1C_PERCENT = LabTest(
    "4548-4",
    "Hemoglobin A1c/Hemoglobin.total in Blood",
    "laboratory",
    {
        LAB: ("HBA1C", "HbA1c"),
        LAMENTIN: ("BIO-HBA1C", "Hémoglobine glyquée"),
        LYON: ("7010", "HbA1c"),
        BASSE_TERRE: ("TH-B-HBA1C", "Hémoglobine glyquée (%)"),
        CHU: ("CHU-B-HBA1C", "HbA1c"),
    },
)
HBA1C_IFCC = LabTest(
    "59261-8",
    "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
    "laboratory",
    {
        LAB: ("HBA1C-IFCC", "HbA1c IFCC"),
        LAMENTIN: ("BIO-HBA1C-IFCC", "Hémoglobine glyquée IFCC"),
        LYON: ("7011", "HbA1c (IFCC)"),
        BASSE_TERRE: ("TH-B-HBA1CM", "Hémoglobine glyquée (mmol/mol)"),
        CHU_PAP: ("HBA1C-IFCC", "Hémoglobine glyquée (IFCC)"),
    },
)
GLUCOSE = LabTest(
    "2345-7",
    "Glucose [Mass/volume] in Serum or Plasma",
    "laboratory",
    {
        LAB: ("GLY", "Glycémie"),
        LAMENTIN: ("BIO-GLY", "Glycémie à jeun"),
        LYON: ("7020", "Glycémie"),
        BASSE_TERRE: ("TH-B-GLY", "Glycémie veineuse"),
        CHU: ("CHU-B-GLU", "Glycémie"),
    },
)
GLUCOSE_MOLAR = LabTest(
    "14749-6",
    "Glucose [Moles/volume] in Serum or Plasma",
    "laboratory",
    {CHU_PAP: ("GLU-M", "Glucose plasmatique")},
)
CREATININE = LabTest(
    "2160-0",
    "Creatinine [Mass/volume] in Serum or Plasma",
    "laboratory",
    {
        LAB: ("CREA", "Créatinine"),
        LAMENTIN: ("BIO-CREAT", "Créatininémie"),
        LYON: ("7030", "Créatinine"),
        BASSE_TERRE: ("TH-B-CREA", "Créatinine sérique"),
        CHU: ("CHU-B-CREA", "Créatininémie"),
    },
)
CREATININE_MOLAR = LabTest(
    "14682-9",
    "Creatinine [Moles/volume] in Serum or Plasma",
    "laboratory",
    {CHU_PAP: ("CREAT-M", "Créatinine plasmatique")},
)
CAPILLARY_GLUCOSE = LabTest(
    "41653-7",
    "Glucose [Mass/volume] in Capillary blood by Glucometer",
    "laboratory",
    {LAMENTIN: ("GLYC-CAP", "Glycémie capillaire"), LYON: ("8020", "Dextro")},
)
CAPILLARY_GLUCOSE_MOLAR = LabTest(
    "14743-9",
    "Glucose [Moles/volume] in Capillary blood by Glucometer",
    "laboratory",
    {BASSE_TERRE: ("TH-M-GLYCAP", "Glycémie capillaire")},
)
BODY_WEIGHT = LabTest(
    "29463-7",
    "Body weight",
    "vital-signs",
    {
        LAB: ("POIDS", "Poids"),
        LAMENTIN: ("POIDS", "Poids"),
        LYON: ("8001", "Poids"),
        BASSE_TERRE: ("TH-M-POIDS", "Poids"),
        CHU: ("CHU-POIDS", "Poids d'entrée"),
        CHU_PAP: ("POIDS-ADM", "Poids à l'admission"),
    },
)


@dataclass(frozen=True)
class Referral:
    """A request to another service: its SNOMED CT code when one is exact, and each source's own code.

    Without an exact code (``snomed`` None) the sources send their local code alone, and the
    ConceptMaps add the broader "Patient referral" (3457005).
    """

    snomed: tuple[str, str] | None
    text: str
    local: dict[str, tuple[str, str]]


REFERRALS = {
    "oncology": Referral(
        None,
        "Adressage en oncologie",
        {
            LAMENTIN: ("ADR-ONCO", "Adressage oncologie"),
            LYON: ("ADR-ONCO", "Adressage oncologie"),
            BASSE_TERRE: ("TH-ADR-ONC", "Adresser en cancérologie"),
        },
    ),
    "palliative": Referral(
        ("306237005", "Referral to palliative care service"),
        "Adressage à l'équipe de soins palliatifs",
        {
            LAMENTIN: ("ADR-PALL", "Adressage soins palliatifs"),
            LYON: ("ADR-PALL", "Adressage soins palliatifs"),
            BASSE_TERRE: ("TH-ADR-PAL", "Adresser en soins palliatifs"),
            CHU: ("CHU-DEM-SP", "Demande équipe mobile de soins palliatifs"),
            CHU_PAP: ("DEM-SSP", "Demande de soins palliatifs"),
        },
    ),
    "follow_up": Referral(
        None,
        "Consultation de suivi après hospitalisation",
        {
            CHU: ("CHU-DEM-CS", "Consultation de suivi"),
            CHU_PAP: ("DEM-CS-SUIVI", "Consultation de suivi post-hospitalisation"),
        },
    ),
}
PATIENT_REFERRAL = ("3457005", "Patient referral")

#: Roles in a CareTeam, from the French health-profession table (TRE-G15).
PROFESSION_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
PHYSICIAN = ("10", "Médecin")
NURSE = ("60", "Infirmier")
