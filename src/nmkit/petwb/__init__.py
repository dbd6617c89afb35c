"""Whole-body PET/CT: lesion delineation, tumour burden, reference regions (PERCIST/Deauville), organ uptake,
inter-organ metabolic networks and a whole-body digital phantom (issue #17). See docs/whole-body-pet.md."""
